//! Distributed searches through a real NATS JetStream server (`nats-server`, started here
//! on a free loopback port) and real `gelaco worker` processes: the same front and the same
//! evaluation log as a local search, through a worker killed mid-evaluation, one that joins
//! late, one with another model file, and messages that are not what they claim.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::{Tiny, broker, unsafe_kill};

struct Fixture {
    dir: tempfile::TempDir,
    model: PathBuf,
    calib: PathBuf,
}

/// A model whose evaluations take a noticeable time (so that a worker can be killed in the
/// middle of one), and its calibration text.
fn fixture() -> Fixture {
    let tiny = Tiny { layers: 8, hidden: 384, ff: 1024, heads: 6, kv_heads: 2, ..Tiny::default() };
    let (dir, model, _) = tiny.write_both();
    let calib = dir.path().join("calib.txt");
    let lines: String = (0..24).map(|i| format!("the thing and the hand number {i} went to the shop and the man said it was good to see them\n")).collect();
    std::fs::write(&calib, lines).unwrap();
    Fixture { dir, model, calib }
}

fn search_args(f: &Fixture, model: &Path, out: &Path) -> Vec<String> {
    let s = |x: &Path| x.to_str().unwrap().to_string();
    let mut v: Vec<String> = ["search", "--samples", "12", "--max-tokens", "64", "--population", "8", "--evaluations", "40", "--seed", "5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(["--heal-picks".into(), "none".into(), "--validation".into(), "none".into(), "--device".into(), "cpu".into()]);
    v.extend(["--model".into(), s(model), "--calib".into(), s(&f.calib), "--out".into(), s(out)]);
    v
}

fn gelaco(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gelaco"));
    c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// A worker process and its JSON events, line by line.
struct Worker {
    child: Child,
    events: Receiver<serde_json::Value>,
}

impl Worker {
    fn start(url: &str, name: &str, models: &[&Path]) -> Worker {
        let mut args = vec!["worker".to_string(), "--nats".into(), url.into(), "--name".into(), name.into(), "--device".into(), "cpu".into(), "--json".into()];
        for m in models {
            args.extend(["--model".into(), m.to_str().unwrap().to_string()]);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_gelaco")).args(&args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, events) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Worker { child, events }
    }

    /// The next event named `event`, waiting at most `limit`.
    fn wait_for(&self, event: &str, limit: Duration) -> serde_json::Value {
        self.until(&[event], limit).pop().unwrap()
    }

    /// The events up to and including the next one named any of `events`, waiting at most
    /// `limit`.
    fn until(&self, events: &[&str], limit: Duration) -> Vec<serde_json::Value> {
        let end = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    let last = events.iter().any(|e| v["event"] == *e);
                    seen.push(v);
                    if last {
                        return seen;
                    }
                }
                Err(_) => panic!("no {events:?} event from the worker within {limit:?}"),
            }
        }
    }

    fn drain(&self) -> Vec<serde_json::Value> {
        self.events.try_iter().collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn evaluations(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("evaluations.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            // what identifies an evaluation, and its outcome
            v.as_object_mut().unwrap().retain(|k, _| ["index", "generation", "genes", "key", "cached", "result"].contains(&k.as_str()));
            v
        })
        .collect()
}

fn local_run(f: &Fixture) -> PathBuf {
    let dir = f.dir.path().join("local");
    let out = gelaco(&search_args(f, &f.model, &dir)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

fn assert_same_search(a: &Path, b: &Path) {
    assert_eq!(gelaco::run::store::read_front(a).unwrap(), gelaco::run::store::read_front(b).unwrap(), "fronts differ");
    let (ea, eb) = (evaluations(a), evaluations(b));
    assert_eq!(ea.len(), eb.len(), "evaluation logs differ in length");
    for (x, y) in ea.iter().zip(&eb) {
        assert_eq!(x, y, "evaluation logs differ");
    }
}

#[test]
fn a_distributed_search_gives_the_local_front_through_a_killed_worker_and_one_that_joins_late() {
    let Some(broker) = broker() else { return };
    let f = fixture();
    let local = local_run(&f);

    let dir = f.dir.path().join("farmed");
    let mut args = search_args(&f, &f.model, &dir);
    args.extend(["--nats".into(), broker.url.clone(), "--no-local-evaluation".into(), "--nats-ack-wait".into(), "2".into()]);
    let search = gelaco(&args).spawn().unwrap();

    // the first worker takes a job and is killed in the middle of evaluating it
    let first = Worker::start(&broker.url, "first", &[]);
    first.wait_for("connected", Duration::from_secs(60));
    let taken = first.wait_for("job", Duration::from_secs(120));
    unsafe_kill(&first.child);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !first.drain().iter().any(|e| e["event"] == "evaluated" && e["key"] == taken["key"] && e["tokens"] == taken["tokens"]),
        "the first worker finished its job before it was killed"
    );
    // a second worker does the rest, the killed job included, once its acknowledgement
    // wait runs out; a third joins in the middle of the search
    let second = Worker::start(&broker.url, "second", &[]);
    let redelivered = second.wait_for("job", Duration::from_secs(120));
    let mut seen = vec![redelivered];
    let third = Worker::start(&broker.url, "third", &[]);
    let stderr = succeeded(search);
    seen.extend(second.drain());
    let third_events = third.drain();
    seen.extend(third_events.iter().cloned());
    assert!(
        seen.iter().any(|e| e["event"] == "job" && e["key"] == taken["key"] && e["tokens"] == taken["tokens"] && e["delivered"].as_i64().unwrap() >= 2),
        "the killed worker's job was not delivered again to another worker: {taken}"
    );
    assert!(third_events.iter().any(|e| e["event"] == "evaluated"), "the worker that joined late evaluated nothing: {third_events:?}");
    assert!(stderr.contains("through NATS"), "{stderr}");
    assert_same_search(&local, &dir);
}

/// Wait for a process whose standard error is piped; its standard error, once it succeeded.
fn succeeded(mut child: Child) -> String {
    use std::io::Read;
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(child.wait().unwrap().success(), "{stderr}");
    stderr
}


#[test]
fn a_worker_with_another_model_file_is_refused_and_the_run_goes_on_with_the_right_one() {
    let Some(broker) = broker() else { return };
    let f = fixture();
    let local = local_run(&f);

    // the search runs on a copy of the model, which is then replaced by another model's
    // file: a worker that finds the run's path finds another model there
    let copy = f.dir.path().join("copy.gguf");
    std::fs::copy(&f.model, &copy).unwrap();
    let dir = f.dir.path().join("farmed");
    let mut args = search_args(&f, &copy, &dir);
    args.extend(["--nats".into(), broker.url.clone(), "--no-local-evaluation".into()]);
    let mut search = gelaco(&args).stderr(Stdio::null()).spawn().unwrap();
    // once the run folder records the model's hash
    let start = Instant::now();
    while !dir.join("calibration.json").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "the search did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let other = Tiny { layers: 8, hidden: 384, ff: 1024, heads: 6, kv_heads: 2, seed: 99, ..Tiny::default() };
    let staged = f.dir.path().join("other.gguf");
    other.write_gguf(&staged);
    std::fs::rename(&staged, &copy).unwrap();

    let wrong = Worker::start(&broker.url, "wrong", &[]);
    let refused = wrong.wait_for("refused", Duration::from_secs(120));
    assert!(refused["reason"].as_str().unwrap().contains("SHA-256"), "{refused}");
    // a worker given the right file by hash serves the run
    let right = Worker::start(&broker.url, "right", &[&f.model]);
    right.wait_for("evaluated", Duration::from_secs(120));
    assert!(search.wait().unwrap().success());
    assert!(!wrong.drain().iter().any(|e| e["event"] == "evaluated"));
    assert_same_search(&local, &dir);
}

/// Publish raw messages with the NATS text protocol (JetStream keeps what is published on a
/// stream's subjects), as a misbehaving or hostile client would.
fn publish_raw(url: &str, messages: &[(String, Vec<u8>)]) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("nats://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; 4096];
    let _ = s.read(&mut buf).unwrap(); // INFO
    s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n").unwrap();
    for (subject, payload) in messages {
        s.write_all(format!("PUB {subject} {}\r\n", payload.len()).as_bytes()).unwrap();
        s.write_all(payload).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"PING\r\n").unwrap();
    let mut seen = String::new();
    while !seen.contains("PONG") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the server closed the connection: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[test]
fn a_killed_coordinator_resumes_with_what_workers_published_meanwhile_and_bad_messages_change_nothing() {
    let Some(broker) = broker() else { return };
    let f = fixture();
    let local = local_run(&f);
    let dir = f.dir.path().join("farmed");
    let mut args = search_args(&f, &f.model, &dir);
    args.extend(["--nats".into(), broker.url.clone(), "--no-local-evaluation".into(), "--json".into()]);
    let mut search = Command::new(env!("CARGO_BIN_EXE_gelaco")).args(&args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    // the run's name on the broker, from the search's events
    let mut lines = BufReader::new(search.stdout.take().unwrap()).lines();
    let run = loop {
        let line = lines.next().expect("the search ended before it connected").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(m) = v["message"].as_str().and_then(|m| m.split(" as run ").nth(1)) {
            break m.split(|c: char| !c.is_ascii_alphanumeric()).next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let worker = Worker::start(&broker.url, "only", &[]);
    // jobs and results that are not what they claim: rejected, ignored, logged
    let result_of_another_run = serde_json::json!({
        "run": "0000000000000000", "model_sha256": "x", "calibration_hash": "y", "key": "g|", "tokens": null,
        "worker": "intruder", "seconds": 0.1, "error": "nothing"
    });
    publish_raw(&broker.url, &[
        (format!("gelaco.jobs.{run}"), b"{\"run\": 3}".to_vec()),
        (format!("gelaco.jobs.{run}"), vec![b'x'; 300 * 1024]),
        (format!("gelaco.results.{run}"), serde_json::to_vec(&result_of_another_run).unwrap()),
        (format!("gelaco.results.{run}"), b"not json".to_vec()),
    ]);
    // the coordinator dies with jobs out; the worker goes on publishing their results
    let start = Instant::now();
    while std::fs::read_to_string(dir.join("evaluations.jsonl")).map(|s| s.lines().count()).unwrap_or(0) < 12 {
        assert!(start.elapsed() < Duration::from_secs(120), "the search made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    unsafe_kill(&search);
    let _ = search.wait();
    std::thread::sleep(Duration::from_secs(2));
    let out = gelaco(&["resume".to_string(), dir.to_str().unwrap().to_string(), "--device".into(), "cpu".into(), "--nats".into(), broker.url.clone(), "--no-local-evaluation".into()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_same_search(&local, &dir);
    let events = worker.drain();
    let rejected: Vec<_> = events.iter().filter(|e| e["event"] == "rejected").collect();
    assert_eq!(rejected.len(), 2, "{events:?}");
    assert!(rejected.iter().any(|e| e["reason"].as_str().unwrap().contains("bytes")), "{rejected:?}");
    // nothing evaluated twice: each job once, though the coordinator died in between
    let mut done: Vec<(String, String)> = events.iter().filter(|e| e["event"] == "evaluated").map(|e| (e["key"].to_string(), e["tokens"].to_string())).collect();
    let n = done.len();
    done.sort();
    done.dedup();
    assert_eq!(done.len(), n, "a job was evaluated twice");
}

#[test]
fn a_search_goes_on_through_a_broker_restart_with_its_queue_kept() {
    let Some(mut broker) = broker() else { return };
    let f = fixture();
    let local = local_run(&f);
    let dir = f.dir.path().join("farmed");
    let mut args = search_args(&f, &f.model, &dir);
    args.extend(["--nats".into(), broker.url.clone(), "--no-local-evaluation".into()]);
    let search = gelaco(&args).spawn().unwrap();
    let worker = Worker::start(&broker.url, "only", &[]);
    let start = Instant::now();
    while std::fs::read_to_string(dir.join("evaluations.jsonl")).map(|s| s.lines().count()).unwrap_or(0) < 10 {
        assert!(start.elapsed() < Duration::from_secs(120), "the search made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    broker.restart(Duration::from_secs(2));
    succeeded(search);
    assert!(worker.drain().iter().any(|e| e["event"] == "evaluated"));
    assert_same_search(&local, &dir);
}

/// A certificate authority and a server certificate for 127.0.0.1 made with `openssl`
/// (in `dir`): the CA's file and the server's certificate and key; `None`, with a message
/// naming the package, where openssl is not installed.
fn tls_files(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let openssl = |args: &[&str]| Command::new("openssl").args(args).current_dir(dir).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if openssl(&["version"]).is_err() {
        eprintln!("SKIPPED: openssl is not installed (Debian package openssl)");
        return None;
    }
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for args in [
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=gelaco test CA"][..],
        &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf"],
    ] {
        assert!(openssl(args).unwrap().success(), "openssl {args:?} failed");
    }
    Some((dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key")))
}

/// Every file under `dir`, as text (lossy).
fn all_text(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_text(&path));
        } else {
            out.push((path.clone(), String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned()));
        }
    }
    out
}

#[test]
fn a_broker_that_asks_for_a_password_over_tls_is_used_and_the_password_shows_nowhere() {
    let f = fixture();
    let certs = f.dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let Some((ca, cert, key)) = tls_files(&certs) else { return };
    let secret = "s3cr3t-Pa55word";
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let options: Vec<String> = ["--user", "alice", "--pass", secret, "--tls", "--tlscert", &s(&cert), "--tlskey", &s(&key)].iter().map(|x| x.to_string()).collect();
    let Some(broker) = common::broker_with(&options) else { return };
    let url = format!("tls://alice:{secret}@127.0.0.1:{}", broker.port);
    let dir = f.dir.path().join("farmed");
    let mut args = search_args(&f, &f.model, &dir);
    if let Some(n) = args.iter_mut().skip_while(|a| *a != "--evaluations").nth(1) {
        *n = "16".into();
    }
    args.extend(["--nats".into(), url.clone(), "--nats-ca".into(), s(&ca), "--verbose".into()]);

    // a worker and the search, both through TLS with the password; their output kept
    let worker_log = f.dir.path().join("worker.log");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_gelaco"))
        .args(["worker", "--nats", &url, "--nats-ca", &s(&ca), "--name", "tls", "--device", "cpu", "--verbose"])
        .stdout(std::fs::File::create(&worker_log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&worker_log).unwrap())
        .spawn()
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gelaco")).args(&args).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("tls://127.0.0.1:{}", broker.port)), "{stderr}");
    let _ = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
    let _ = worker.wait();
    let worker_text = std::fs::read_to_string(&worker_log).unwrap();
    assert!(worker_text.contains(&format!("connected to tls://127.0.0.1:{}", broker.port)), "{worker_text}");
    for (what, text) in [("the search's output", format!("{stdout}{stderr}")), ("the worker's output", worker_text)] {
        assert!(!text.contains(secret), "{what} shows the password:\n{text}");
    }
    for (path, text) in all_text(&dir) {
        assert!(!text.contains(secret) && !text.contains("alice"), "{} holds the credentials", path.display());
    }

    // a wrong password, a missing CA and no TLS: a clear error naming the server and what to
    // do, never the password
    let wrong = format!("tls://alice:wrong-{secret}@127.0.0.1:{}", broker.port);
    let plain = format!("nats://alice:{secret}@127.0.0.1:{}", broker.port);
    for (url, ca, hint) in [(wrong.as_str(), Some(&ca), "credentials"), (url.as_str(), None, "--nats-ca"), (plain.as_str(), None, "--nats-ca")] {
        let mut args = vec!["worker".to_string(), "--nats".into(), url.into(), "--device".into(), "cpu".into()];
        if let Some(ca) = ca {
            args.extend(["--nats-ca".into(), s(ca)]);
        }
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_gelaco")).args(&args).stdin(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(30), "{url}: the error took {:?}", started.elapsed());
        assert!(stderr.contains(&format!("127.0.0.1:{}", broker.port)) && stderr.contains(hint), "{url}: {stderr}");
        assert!(!stderr.contains(secret) && !stderr.contains("panicked"), "{url}: {stderr}");
    }
    // a credentials file that is not there is named
    let out = Command::new(env!("CARGO_BIN_EXE_gelaco")).args(["worker", "--nats", &broker.url, "--nats-creds", "/nonexistent/user.creds"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--nats-creds") && stderr.contains("/nonexistent/user.creds"), "{stderr}");

    // a server that asks for a token: the token in the address reaches it, and shows nowhere
    let token = "t0ken-Zq9";
    let Some(tokened) = common::broker_with(&["--auth".to_string(), token.to_string()]) else { return };
    let mut worker = Command::new(env!("CARGO_BIN_EXE_gelaco"))
        .args(["worker", "--nats", &format!("nats://{token}@127.0.0.1:{}", tokened.port), "--device", "cpu", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(worker.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(line.contains("\"connected\"") && !line.contains(token), "{line}");
}

#[test]
fn a_worker_stopped_twice_hands_its_job_back_for_another_at_once() {
    let Some(broker) = broker() else { return };
    let f = fixture();
    let dir = f.dir.path().join("farmed");
    let mut args = search_args(&f, &f.model, &dir);
    if let Some(n) = args.iter_mut().skip_while(|a| *a != "--evaluations").nth(1) {
        *n = "16".into();
    }
    // an acknowledgement wait longer than the test: only a job handed back comes again soon
    args.extend(["--nats".into(), broker.url.clone(), "--no-local-evaluation".into(), "--nats-ack-wait".into(), "240".into()]);
    let search = gelaco(&args).spawn().unwrap();
    // Signals sent back to back can merge into one while the worker waits for the CPU, and
    // a short job can end between the two: each stop is sent once the worker has
    // acknowledged the one before, and a worker that finished its job first is replaced.
    let mut handed_back = None;
    for attempt in 0..5 {
        let worker = Worker::start(&broker.url, &format!("first {attempt}"), &[]);
        let mut seen = vec![worker.wait_for("job", Duration::from_secs(120))];
        let term = || assert!(Command::new("kill").args(["-TERM", &worker.child.id().to_string()]).status().unwrap().success());
        term();
        seen.extend(worker.until(&["stopping"], Duration::from_secs(30)));
        term();
        seen.extend(worker.until(&["left", "stopped"], Duration::from_secs(30)));
        let end = seen.last().unwrap();
        if end["event"] == "left" && end["released"] == true {
            // the job it was evaluating: the last one it took
            handed_back = seen.iter().rev().find(|e| e["event"] == "job").cloned();
            break;
        }
    }
    let taken = handed_back.expect("no worker stopped twice was still evaluating its job in five tries");
    let second = Worker::start(&broker.url, "second", &[]);
    let started = Instant::now();
    succeeded(search);
    assert!(started.elapsed() < Duration::from_secs(200), "the search waited for the job's acknowledgement wait");
    let seen = second.drain();
    assert!(
        seen.iter().any(|e| e["event"] == "job" && e["key"] == taken["key"] && e["tokens"] == taken["tokens"] && e["delivered"].as_i64().unwrap() >= 2),
        "the job handed back did not go to the other worker: {taken}"
    );
}
