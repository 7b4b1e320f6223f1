//! Zero-shot multiple choice, as lm-evaluation-harness scores it.
//!
//! Every choice of an item is a request `(context, continuation)`; its score is the summed
//! log-likelihood of the continuation's tokens after the context. `acc` takes the choice
//! with the highest score, `acc_norm` the highest score per UTF-8 byte of the choice text.
//! Standard errors are those of a mean (sample standard deviation / sqrt(n)).
//!
//! Prompts follow lm-evaluation-harness: ARC and PIQA `"Question: {q}\nAnswer:"` with
//! `" {choice}"`; HellaSwag the cleaned `"{activity}: {context}"` with `" {ending}"`;
//! WinoGrande partial scoring (the sentence up to the blank with each option is the
//! context, the rest of the sentence the continuation); BoolQ
//! `"{passage}\nQuestion: {question}?\nAnswer:"` with `" no"` / `" yes"`. Tokenisation
//! follows its `_encode_pair`: trailing spaces of a context move to the continuation, the
//! pair is encoded whole and the context's tokens are cut off. No BOS is added.

use std::path::{Path, PathBuf};

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::llama::{KvCache, Llama, download};
use crate::model::tokenizer::Tokenizer;

/// Data-set layouts this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskFormat {
    /// AI2 ARC JSONL: `question.stem`, `question.choices[{text,label}]`, `answerKey`.
    Arc,
    /// PIQA JSONL (`goal`, `sol1`, `sol2`) with labels in a `-labels.lst` file beside it.
    Piqa,
    /// HellaSwag: llama.cpp's 6-line text layout, or the original JSONL.
    Hellaswag,
    /// WinoGrande JSONL (`sentence` with `_`, `option1`, `option2`, `answer`).
    Winogrande,
    /// BoolQ JSONL (`passage`, `question`, `label` true/false).
    Boolq,
    /// Any JSONL of `{"context", "choices", "label"}`.
    Generic,
}

impl TaskFormat {
    /// The layout a task name implies: `arc_easy`, `arc_challenge`, `piqa`, `hellaswag`,
    /// `winogrande`, `boolq`; anything else is generic JSONL.
    pub fn for_name(name: &str) -> Self {
        let n = name.to_ascii_lowercase().replace('-', "_");
        if n.starts_with("arc") {
            TaskFormat::Arc
        } else if n.starts_with("piqa") {
            TaskFormat::Piqa
        } else if n.starts_with("hellaswag") {
            TaskFormat::Hellaswag
        } else if n.starts_with("winogrande") {
            TaskFormat::Winogrande
        } else if n.starts_with("boolq") {
            TaskFormat::Boolq
        } else {
            TaskFormat::Generic
        }
    }
}

/// One multiple-choice question: one request per choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// `(context, continuation)` per choice.
    pub requests: Vec<(String, String)>,
    /// Bytes of each choice's text, for `acc_norm`.
    pub choice_bytes: Vec<usize>,
    pub label: usize,
}

/// A loaded task.
#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub path: PathBuf,
    pub format: TaskFormat,
    pub items: Vec<Item>,
}

fn bad(path: &Path, line: usize, msg: impl std::fmt::Display) -> Error {
    Error::format(path, format!("line {line}: {msg}"))
}

fn str_field<'a>(v: &'a Value, key: &str, path: &Path, line: usize) -> Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(path, line, format!("no text field '{key}'")))
}

/// A label given as a number, a numeric string, or true/false.
fn label_value(v: &Value) -> Option<usize> {
    match v {
        Value::Number(n) => n.as_u64().map(|x| x as usize),
        Value::Bool(b) => Some(*b as usize),
        Value::String(s) => match s.trim() {
            "true" | "True" => Some(1),
            "false" | "False" => Some(0),
            t => t.parse().ok(),
        },
        _ => None,
    }
}

fn choice(context: String, text: &str) -> ((String, String), usize) {
    ((context, format!(" {text}")), text.len())
}

fn item(context: &str, choices: &[&str], label: usize, path: &Path, line: usize) -> Result<Item> {
    if choices.len() < 2 {
        return Err(bad(path, line, "an item needs at least two choices"));
    }
    if label >= choices.len() {
        return Err(bad(path, line, format!("label {label} is not one of the {} choices", choices.len())));
    }
    let (requests, choice_bytes) = choices.iter().map(|c| choice(context.to_string(), c)).unzip();
    Ok(Item { requests, choice_bytes, label })
}

/// lm-evaluation-harness's HellaSwag text cleaning.
pub fn hellaswag_preprocess(text: &str) -> String {
    let t = text.trim().replace(" [title]", ". ");
    let t = regex::Regex::new(r"\[.*?\]").map(|re| re.replace_all(&t, "").into_owned()).unwrap_or(t);
    t.replace("  ", " ")
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + &c.as_str().to_lowercase(),
        None => String::new(),
    }
}

fn jsonl(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| bad(path, i + 1, format!("not valid JSON: {e}")))?;
        out.push((i + 1, v));
    }
    Ok(out)
}

/// The labels file beside a PIQA or WinoGrande JSONL: `dev.jsonl` -> `dev-labels.lst`.
fn labels_beside(path: &Path) -> Option<Vec<String>> {
    let stem = path.file_stem()?.to_string_lossy().into_owned();
    let p = path.with_file_name(format!("{stem}-labels.lst"));
    let text = std::fs::read_to_string(p).ok()?;
    Some(text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
}

impl Task {
    /// Read a task file; `limit` keeps the first items.
    pub fn load(name: &str, path: &Path, limit: Option<usize>) -> Result<Self> {
        let format = TaskFormat::for_name(name);
        let limit = limit.unwrap_or(usize::MAX);
        let mut items = Vec::new();
        match format {
            TaskFormat::Hellaswag if path.extension().is_none_or(|e| e != "jsonl") => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                let lines: Vec<&str> = text.lines().collect();
                if lines.len() % 6 != 0 {
                    return Err(Error::format(
                        path,
                        format!("{} lines: the HellaSwag text layout has 6 lines per item", lines.len()),
                    ));
                }
                for (k, rec) in lines.chunks_exact(6).take(limit).enumerate() {
                    let line = k * 6 + 1;
                    let label: usize = rec[1].trim().parse().map_err(|_| bad(path, line + 1, "the gold line is not a number"))?;
                    items.push(item(rec[0], &rec[2..6], label, path, line)?);
                }
            }
            _ => {
                let labels = match format {
                    TaskFormat::Piqa | TaskFormat::Winogrande => labels_beside(path),
                    _ => None,
                };
                if format == TaskFormat::Piqa && labels.is_none() {
                    return Err(Error::format(path, "PIQA needs its labels file beside it (for dev.jsonl: dev-labels.lst)"));
                }
                for (k, (line, v)) in jsonl(path)?.into_iter().take(limit).enumerate() {
                    let file_label = labels.as_ref().map(|l| {
                        l.get(k).cloned().ok_or_else(|| Error::format(path, format!("the labels file has no line {}", k + 1)))
                    });
                    items.push(Self::parse(format, &v, file_label.transpose()?, path, line)?);
                }
            }
        }
        if items.is_empty() {
            return Err(Error::format(path, "no items"));
        }
        Ok(Task { name: name.to_string(), path: path.to_path_buf(), format, items })
    }

    fn parse(format: TaskFormat, v: &Value, file_label: Option<String>, path: &Path, line: usize) -> Result<Item> {
        match format {
            TaskFormat::Arc => {
                let q = v.get("question").ok_or_else(|| bad(path, line, "no 'question' object"))?;
                let stem = str_field(q, "stem", path, line)?;
                let choices = q
                    .get("choices")
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad(path, line, "no 'question.choices' list"))?;
                let mut texts = Vec::new();
                let mut labels = Vec::new();
                for c in choices {
                    texts.push(str_field(c, "text", path, line)?);
                    labels.push(str_field(c, "label", path, line)?);
                }
                let key = str_field(v, "answerKey", path, line)?;
                let label = labels
                    .iter()
                    .position(|l| *l == key)
                    .ok_or_else(|| bad(path, line, format!("answerKey '{key}' is not a choice label")))?;
                item(&format!("Question: {stem}\nAnswer:"), &texts, label, path, line)
            }
            TaskFormat::Piqa => {
                let goal = str_field(v, "goal", path, line)?;
                let sols = [str_field(v, "sol1", path, line)?, str_field(v, "sol2", path, line)?];
                let label = file_label
                    .as_deref()
                    .and_then(|l| l.parse().ok())
                    .or_else(|| v.get("label").and_then(label_value))
                    .ok_or_else(|| bad(path, line, "no label"))?;
                item(&format!("Question: {goal}\nAnswer:"), &sols, label, path, line)
            }
            TaskFormat::Hellaswag => {
                let activity = str_field(v, "activity_label", path, line)?;
                let ctx = match v.get("ctx_a").and_then(Value::as_str) {
                    Some(a) => format!("{a} {}", capitalize(v.get("ctx_b").and_then(Value::as_str).unwrap_or(""))),
                    None => str_field(v, "ctx", path, line)?.to_string(),
                };
                let endings: Vec<String> = v
                    .get("endings")
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad(path, line, "no 'endings' list"))?
                    .iter()
                    .map(|e| e.as_str().map(hellaswag_preprocess))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad(path, line, "an ending is not text"))?;
                let label = v.get("label").and_then(label_value).ok_or_else(|| bad(path, line, "no label"))?;
                let query = hellaswag_preprocess(&format!("{activity}: {ctx}"));
                let refs: Vec<&str> = endings.iter().map(String::as_str).collect();
                item(&query, &refs, label, path, line)
            }
            TaskFormat::Winogrande => {
                let sentence = str_field(v, "sentence", path, line)?;
                let options = [str_field(v, "option1", path, line)?, str_field(v, "option2", path, line)?];
                let blank = sentence.find('_').ok_or_else(|| bad(path, line, "the sentence has no '_' blank"))?;
                let answer = file_label
                    .or_else(|| v.get("answer").and_then(|a| label_value(a).map(|x| x.to_string())))
                    .ok_or_else(|| bad(path, line, "no answer"))?;
                let label = match answer.as_str() {
                    "1" => 0,
                    "2" => 1,
                    other => return Err(bad(path, line, format!("answer '{other}' is not 1 or 2"))),
                };
                let rest = sentence[blank + 1..].trim();
                let requests = options
                    .iter()
                    .map(|o| (format!("{}{o}", &sentence[..blank]), format!(" {rest}")))
                    .collect();
                // the continuation is the same for both options: acc_norm equals acc
                Ok(Item { requests, choice_bytes: vec![rest.len().max(1); 2], label })
            }
            TaskFormat::Boolq => {
                let passage = str_field(v, "passage", path, line)?;
                let question = str_field(v, "question", path, line)?;
                let label = v.get("label").and_then(label_value).ok_or_else(|| bad(path, line, "no true/false label"))?;
                item(&format!("{passage}\nQuestion: {question}?\nAnswer:"), &["no", "yes"], label, path, line)
            }
            TaskFormat::Generic => {
                let context = str_field(v, "context", path, line)?;
                let choices: Vec<&str> = v
                    .get("choices")
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad(path, line, "no 'choices' list"))?
                    .iter()
                    .map(Value::as_str)
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad(path, line, "a choice is not text"))?;
                let label = v.get("label").and_then(label_value).ok_or_else(|| bad(path, line, "no numeric 'label'"))?;
                item(context, &choices, label, path, line)
            }
        }
    }

    pub fn requests(&self) -> usize {
        self.items.iter().map(|i| i.requests.len()).sum()
    }
}

/// lm-evaluation-harness's `_encode_pair`: context tokens and continuation tokens.
pub fn encode_pair(tokenizer: &Tokenizer, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end();
    let (context, continuation) = if trimmed.len() < context.len() {
        (trimmed.to_string(), format!("{}{continuation}", &context[trimmed.len()..]))
    } else {
        (context.to_string(), continuation.to_string())
    };
    let whole = tokenizer.encode(&format!("{context}{continuation}"))?;
    let ctx = tokenizer.encode(&context)?;
    let split = ctx.len().min(whole.len());
    Ok((ctx, whole[split..].to_vec()))
}

/// Scores of one task for one model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskScore {
    pub task: String,
    pub items: usize,
    pub acc: f64,
    pub acc_stderr: f64,
    pub acc_norm: f64,
    pub acc_norm_stderr: f64,
    /// Per item: whether `acc` counted it correct.
    pub correct: Vec<bool>,
    pub seconds: f64,
}

fn mean_stderr(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Accuracy and length-normalised accuracy from per-choice log-likelihoods.
pub fn score(items: &[Item], loglik: &[Vec<f64>]) -> (Vec<bool>, Vec<bool>) {
    let argmax = |v: Vec<f64>| {
        v.iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best })
            .0
    };
    let mut acc = Vec::with_capacity(items.len());
    let mut norm = Vec::with_capacity(items.len());
    for (it, ll) in items.iter().zip(loglik) {
        acc.push(argmax(ll.clone()) == it.label);
        let normed = ll.iter().zip(&it.choice_bytes).map(|(l, b)| l / (*b).max(1) as f64).collect();
        norm.push(argmax(normed) == it.label);
    }
    (acc, norm)
}

/// How requests are batched.
#[derive(Debug, Clone, Copy)]
pub struct ChoiceOptions {
    /// Rows per forward pass.
    pub batch_size: usize,
    /// Longest input; longer requests lose context tokens from the left.
    pub max_length: usize,
}

impl Default for ChoiceOptions {
    fn default() -> Self {
        ChoiceOptions { batch_size: 16, max_length: 2048 }
    }
}

/// Rows of logits sent through the LM head at once.
const HEAD_ROWS: usize = 512;

/// The length a batch of inputs at most `len` long is padded to: the next power of two from
/// 16, at most `max`.
pub fn bucket(len: usize, max: usize) -> usize {
    len.max(16).next_power_of_two().min(max.max(len))
}

/// One request as the model reads it: its index, the input (context and continuation
/// without the last token, cut to the longest input from the left) and the continuation
/// tokens the input's last outputs predict.
type Input = (usize, Vec<u32>, Vec<u32>);

/// Log-likelihood of each continuation after its context (`pairs` of token ids).
///
/// On the CPU backend, consecutive requests with one context (the choices of an item) share
/// it: the context runs once, its keys and values are cached, and every choice continues
/// from them. Other requests run whole, batched longest first and padded to the batch's own
/// length. On WGPU every request runs whole, in batches padded to a few bucket lengths.
pub fn loglikelihoods(
    model: &Llama,
    pairs: &[(Vec<u32>, Vec<u32>)],
    opts: ChoiceOptions,
    mut progress: impl FnMut(usize) -> bool,
) -> Result<Vec<f64>> {
    let max_len = opts.max_length.min(model.config.max_position_embeddings).max(2);
    let cpu = crate::backend::is_cpu(&model.device);
    // input = (context + continuation)[-(max_len+1):][:-1]; the last |cont| outputs score it
    let mut inputs: Vec<Input> = Vec::with_capacity(pairs.len());
    for (i, (ctx, cont)) in pairs.iter().enumerate() {
        if cont.is_empty() {
            return Err(Error::Invalid(format!("request {i} has an empty continuation")));
        }
        model.check_ids(ctx.iter().chain(cont)).map_err(|m| Error::Invalid(format!("request {i}: {m}")))?;
        let mut all: Vec<u32> = ctx.iter().chain(cont).copied().collect();
        if all.len() > max_len + 1 {
            all.drain(..all.len() - (max_len + 1));
        }
        all.pop();
        if all.is_empty() {
            return Err(Error::Invalid(format!("request {i} has no context token to predict from")));
        }
        let cont = cont[cont.len().saturating_sub(all.len())..].to_vec();
        inputs.push((i, all, cont));
    }
    let mut out = vec![0.0; pairs.len()];
    let mut done = 0;
    let mut whole: Vec<Input> = Vec::with_capacity(inputs.len());
    let mut rest = inputs.into_iter().peekable();
    while let Some(first) = rest.next() {
        let ctx = &pairs[first.0].0;
        let mut group = vec![first];
        while let Some(next) = rest.next_if(|n| cpu && pairs[n.0].0 == *ctx) {
            group.push(next);
        }
        // shared only when no request of the group loses context tokens to the length limit
        let fits = group.iter().all(|g| ctx.len() + pairs[g.0].1.len() <= max_len + 1);
        if group.len() < 2 || ctx.is_empty() || !fits {
            whole.extend(group);
            continue;
        }
        let conts: Vec<&[u32]> = group.iter().map(|g| pairs[g.0].1.as_slice()).collect();
        let sums = shared_context(model, ctx, &conts)?;
        for (g, s) in group.iter().zip(sums) {
            out[g.0] = finite(g.0, s)?;
        }
        done += group.len();
        if !progress(done) {
            return Err(Error::Cancelled);
        }
    }
    // longest first: padding stays small and the largest batch comes first
    whole.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    let batch_rows = opts.batch_size.max(1);
    for batch in whole.chunks(batch_rows) {
        let sums = whole_requests(model, batch, max_len, batch_rows, cpu)?;
        for (b, s) in batch.iter().zip(sums) {
            out[b.0] = finite(b.0, s)?;
        }
        done += batch.len();
        if !progress(done) {
            return Err(Error::Cancelled);
        }
    }
    Ok(out)
}

fn finite(request: usize, loglik: f64) -> Result<f64> {
    if loglik.is_finite() {
        Ok(loglik)
    } else {
        Err(Error::Numerical(format!("request {request} has a non-finite log-likelihood")))
    }
}

/// Summed log-probabilities per owner: `picks` are (row of `normed` `[rows, hidden]`,
/// target token, owner).
fn head_sums(model: &Llama, normed: Tensor<2>, picks: &[(i32, i32, usize)], owners: usize, exact: bool) -> Result<Vec<f64>> {
    let device = &model.device;
    let hidden = model.config.hidden_size;
    let mut sums = vec![0.0f64; owners];
    for chunk in picks.chunks(HEAD_ROWS) {
        let n = chunk.len();
        // on WGPU a bucket of rows; the padding rows repeat row 0 and are not read
        let rows_n = if exact { n } else { bucket(n, HEAD_ROWS) };
        let mut pos: Vec<i32> = chunk.iter().map(|p| p.0).collect();
        let mut tgt: Vec<i32> = chunk.iter().map(|p| p.1).collect();
        pos.resize(rows_n, 0);
        tgt.resize(rows_n, 0);
        let idx = Tensor::<1, Int>::from_data(TensorData::new(pos, [rows_n]), device);
        let rows = normed.clone().select(0, idx).reshape([1, rows_n, hidden]);
        let lp = log_softmax(model.logits(rows), 2);
        let tg = Tensor::<3, Int>::from_data(TensorData::new(tgt, [1, rows_n, 1]), device);
        let picked = download(lp.gather(2, tg).reshape([rows_n]))?;
        for (p, v) in chunk.iter().zip(&picked.data) {
            sums[p.2] += *v as f64;
        }
    }
    Ok(sums)
}

/// Requests run whole in one batch; on WGPU the batch has `batch_rows` rows (padding rows
/// added) of a bucket length, so a device that compiles a kernel per shape meets a handful
/// of shapes, not one per batch. Right padding does not change the causal outputs at real
/// positions.
fn whole_requests(model: &Llama, batch: &[Input], max_len: usize, batch_rows: usize, cpu: bool) -> Result<Vec<f64>> {
    let hidden = model.config.hidden_size;
    let mut rows: Vec<Vec<u32>> = batch.iter().map(|b| b.1.clone()).collect();
    let longest = rows.iter().map(Vec::len).max().unwrap_or(1);
    let (seq, rows_n) = if cpu { (longest, batch.len()) } else { (bucket(longest, max_len), batch_rows) };
    rows.resize(rows_n, vec![0]);
    let lens: Vec<usize> = rows.iter().map(Vec::len).collect();
    let padded: Vec<Vec<u32>> = rows
        .into_iter()
        .map(|mut r| {
            r.resize(seq, 0);
            r
        })
        .collect();
    let normed = model.forward(&padded, None)?.reshape([rows_n * seq, hidden]);
    // rows (flattened) whose outputs predict continuation tokens, with their targets
    let mut picks = Vec::new();
    for (r, (b, len)) in batch.iter().zip(&lens).enumerate() {
        let n = b.2.len();
        for (k, &t) in b.2.iter().enumerate() {
            picks.push(((r * seq + len - n + k) as i32, t as i32, r));
        }
    }
    head_sums(model, normed, &picks, batch.len(), cpu)
}

/// Continuations after one shared, non-empty context that fits with each of them: the
/// context runs once (its last output predicts every continuation's first token), then
/// every continuation but its last token runs as one row of a batch on the context's
/// cached keys and values.
fn shared_context(model: &Llama, ctx: &[u32], conts: &[&[u32]]) -> Result<Vec<f64>> {
    let layers = model.num_layers();
    let hidden = model.config.hidden_size;
    let c = ctx.len();
    let longest = conts.iter().map(|x| x.len()).max().unwrap_or(1);
    let mut state = model.state(c + longest);
    let mut cache = KvCache::new(layers);
    let h = model.embed(model.ids_tensor(&[ctx.to_vec()])?);
    let h = model.run_layers(h, 0..layers, &mut state, Some(&mut cache), None);
    let last = model.final_norm(h.slice_dim(1, c - 1..c)).reshape([1, hidden]);
    let first: Vec<(i32, i32, usize)> = conts.iter().enumerate().map(|(j, x)| (0, x[0] as i32, j)).collect();
    let mut sums = head_sums(model, last, &first, conts.len(), true)?;
    let m = longest - 1;
    if m == 0 {
        return Ok(sums);
    }
    let k = conts.len();
    let rows: Vec<Vec<u32>> = conts
        .iter()
        .map(|x| {
            let mut r = x[..x.len() - 1].to_vec();
            r.resize(m, 0);
            r
        })
        .collect();
    let mut cache = cache.repeat_batch(k);
    let h = model.embed(model.ids_tensor(&rows)?);
    let h = model.run_layers(h, 0..layers, &mut state, Some(&mut cache), None);
    let normed = model.final_norm(h).reshape([k * m, hidden]);
    let mut picks = Vec::new();
    for (j, x) in conts.iter().enumerate() {
        for (t, &tok) in x.iter().enumerate().skip(1) {
            picks.push(((j * m + t - 1) as i32, tok as i32, j));
        }
    }
    for (s, more) in sums.iter_mut().zip(head_sums(model, normed, &picks, k, true)?) {
        *s += more;
    }
    Ok(sums)
}

/// Evaluate one task: tokenise every request, score them, reduce to accuracies.
/// `progress(done, total)` is called after every batch; returning false cancels.
pub fn evaluate(
    model: &Llama,
    tokenizer: &Tokenizer,
    task: &Task,
    opts: ChoiceOptions,
    mut progress: impl FnMut(usize, usize) -> bool,
) -> Result<TaskScore> {
    let start = std::time::Instant::now();
    let mut pairs = Vec::with_capacity(task.requests());
    for it in &task.items {
        for (c, x) in &it.requests {
            pairs.push(encode_pair(tokenizer, c, x)?);
        }
    }
    let total = pairs.len();
    let flat = loglikelihoods(model, &pairs, opts, |d| progress(d, total))?;
    let mut ll = Vec::with_capacity(task.items.len());
    let mut k = 0;
    for it in &task.items {
        ll.push(flat[k..k + it.requests.len()].to_vec());
        k += it.requests.len();
    }
    let (acc, norm) = score(&task.items, &ll);
    let f = |v: &[bool]| mean_stderr(&v.iter().map(|&b| b as u8 as f64).collect::<Vec<_>>());
    let (a, ase) = f(&acc);
    let (n, nse) = f(&norm);
    Ok(TaskScore {
        task: task.name.clone(),
        items: task.items.len(),
        acc: a,
        acc_stderr: ase,
        acc_norm: n,
        acc_norm_stderr: nse,
        correct: acc,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_padded_to_a_few_lengths() {
        assert_eq!([1, 16, 17, 33, 100, 513, 2048].map(|n| bucket(n, 2048)), [16, 16, 32, 64, 128, 1024, 2048]);
        // never below the input, never above the limit unless the input is
        assert_eq!(bucket(300, 256), 300);
        assert_eq!(bucket(200, 256), 256);
        let shapes: std::collections::BTreeSet<usize> = (1..=2048).map(|n| bucket(n, 2048)).collect();
        assert_eq!(shapes.len(), 8);
    }

    #[test]
    fn hellaswag_cleaning_matches_the_harness() {
        assert_eq!(
            hellaswag_preprocess("Making a cake: [header] How to bake [title] Mix flour.  Then bake."),
            "Making a cake: How to bake. Mix flour. Then bake."
        );
    }

    #[test]
    fn accuracy_and_normalised_accuracy() {
        let items = vec![
            Item { requests: vec![Default::default(); 2], choice_bytes: vec![1, 10], label: 1 },
            Item { requests: vec![Default::default(); 2], choice_bytes: vec![5, 5], label: 0 },
        ];
        // item 0: raw prefers the short choice 0, per byte prefers choice 1
        let ll = vec![vec![-2.0, -5.0], vec![-1.0, -3.0]];
        let (acc, norm) = score(&items, &ll);
        assert_eq!(acc, vec![false, true]);
        assert_eq!(norm, vec![true, true]);
        let (m, se) = mean_stderr(&[1.0, 0.0, 1.0, 0.0]);
        assert_eq!(m, 0.5);
        // sample sd 0.57735 / sqrt(4)
        assert!((se - 0.288_675_134_6).abs() < 1e-9);
    }

    #[test]
    fn readers_for_each_layout() {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let arc = w(
            "arc.jsonl",
            r#"{"id":"x","question":{"stem":"Sky?","choices":[{"text":"blue","label":"A"},{"text":"green","label":"B"}]},"answerKey":"B"}"#,
        );
        let t = Task::load("arc_easy", &arc, None).unwrap();
        assert_eq!(t.items[0].requests[0], ("Question: Sky?\nAnswer:".into(), " blue".into()));
        assert_eq!(t.items[0].label, 1);
        assert_eq!(t.items[0].choice_bytes, vec![4, 5]);

        let wino = w("dev.jsonl", "{\"sentence\": \"Ann beat Bo so _ won.\", \"option1\": \"Ann\", \"option2\": \"Bo\", \"answer\": \"1\"}\n");
        let t = Task::load("winogrande", &wino, None).unwrap();
        assert_eq!(t.items[0].requests[1], ("Ann beat Bo so Bo".into(), " won.".into()));
        assert_eq!(t.items[0].label, 0);

        let boolq = w("b.jsonl", r#"{"question":"is it","passage":"P -- text","label":"false"}"#);
        let t = Task::load("boolq", &boolq, None).unwrap();
        assert_eq!(t.items[0].requests[1].1, " yes");
        assert_eq!(t.items[0].label, 0);

        let hs = w("hs.txt", "Act: ctx\n2\na\nb\nc\nd\n");
        let t = Task::load("hellaswag", &hs, None).unwrap();
        assert_eq!(t.items[0].requests[2], ("Act: ctx".into(), " c".into()));
        assert_eq!(t.items[0].label, 2);

        let g = w("g.jsonl", "{\"context\": \"2+2=\", \"choices\": [\"4\", \"5\"], \"label\": 0}\n{\"context\": \"x\", \"choices\": [\"a\"], \"label\": 0}\n");
        let e = Task::load("mine", &g, None).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("two choices"), "{e}");
        assert_eq!(Task::load("mine", &g, Some(1)).unwrap().items.len(), 1);

        let piqa = w("p.jsonl", "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\"}\n");
        assert!(Task::load("piqa", &piqa, None).unwrap_err().to_string().contains("labels"));
        w("p-labels.lst", "1\n");
        assert_eq!(Task::load("piqa", &piqa, None).unwrap().items[0].label, 1);
    }
}
