//! A search session of a job: the limits it runs under, the progress it reports, the
//! commands it takes in, and what happens after each generation and at the end.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::FrontEntry;
use super::job::{Command, Event, Outbox, Progress, StopReason};
use super::pick::{Picker, candidate_entries, front_entries};
use super::store::{Checkpoint, RunInfo, RunStore, Status};
use crate::error::Result;
use crate::search::algorithm::Algorithm;
use crate::search::baselines::BaselineSolution;
use crate::search::problem::{EvaluatedPlan, PlanProblem};
use crate::search::{SearchSettings, hypervolume};

/// A search session: the limits it runs under, and what the evaluation callback, the stop
/// check and the generation loop share.
pub(super) struct Session<'a> {
    out: &'a Outbox,
    commands: &'a Receiver<Command>,
    stop: &'a AtomicBool,
    budget: usize,
    generations: Option<usize>,
    max_seconds: Option<f64>,
    started: Instant,
    /// Seconds spent in earlier sessions of the run.
    previous_seconds: f64,
    live: RefCell<Live>,
}

/// What changes while a session runs.
struct Live {
    store: RunStore,
    generation: usize,
    /// Evaluations of the run so far, this session's included.
    evaluations: usize,
    /// Evaluations made in this session (for the rate).
    session_evaluations: usize,
    best_fitness: f64,
    front_size: usize,
    hypervolume: f64,
    /// Hypervolume after each generation, the run's first included.
    history: Vec<f64>,
    cache_hits: usize,
    unique: usize,
    screened: usize,
    paused: bool,
    last_progress: Instant,
    reason: Option<StopReason>,
}

impl<'a> Session<'a> {
    pub(super) fn new(store: RunStore, settings: &SearchSettings, checkpoint: Option<&Checkpoint>, out: &'a Outbox, commands: &'a Receiver<Command>, stop: &'a AtomicBool) -> Self {
        let now = Instant::now();
        Session {
            out,
            commands,
            stop,
            budget: settings.evaluations,
            generations: settings.generations,
            max_seconds: settings.max_seconds,
            started: now,
            previous_seconds: checkpoint.map_or(0.0, |c| c.seconds),
            live: RefCell::new(Live {
                store,
                generation: checkpoint.map_or(0, |c| c.state.generation),
                evaluations: checkpoint.map_or(0, |c| c.state.evaluations),
                session_evaluations: 0,
                best_fitness: 0.0,
                front_size: 0,
                hypervolume: 0.0,
                history: checkpoint.map_or_else(Vec::new, |c| c.hypervolume.clone()),
                cache_hits: 0,
                unique: 0,
                screened: 0,
                paused: false,
                last_progress: now - Duration::from_secs(1),
                reason: None,
            }),
        }
    }

    /// A resumed run's candidates are picked again when this session ends: the earlier
    /// session's are cleared.
    pub(super) fn clear_candidates(&self) -> Result<()> {
        self.live.borrow().store.write_candidates(&[])
    }

    /// Seconds the run has searched, earlier sessions included.
    fn elapsed(&self) -> f64 {
        self.previous_seconds + self.started.elapsed().as_secs_f64()
    }

    /// Send the progress, at most five times a second unless `force`d.
    fn progress(&self, force: bool) {
        let mut live = self.live.borrow_mut();
        if !force && live.last_progress.elapsed() < Duration::from_millis(200) {
            return;
        }
        live.last_progress = Instant::now();
        let rate = live.session_evaluations as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let progress = Progress {
            generation: live.generation,
            evaluations: live.evaluations,
            budget: self.budget,
            rate,
            cache_hits: live.cache_hits,
            unique: live.unique,
            best_fitness: live.best_fitness,
            front_size: live.front_size,
            hypervolume: live.hypervolume,
            screened: live.screened,
            eta_seconds: (rate > 0.0).then(|| self.budget.saturating_sub(live.evaluations) as f64 / rate),
            paused: live.paused,
        };
        drop(live);
        self.out.send(Event::Progress(progress));
    }

    /// Log a new evaluation in the run folder, then report it.
    pub(super) fn record(&self, e: &EvaluatedPlan) -> Result<()> {
        {
            let mut live = self.live.borrow_mut();
            live.store.append(e)?;
            live.session_evaluations += 1;
            live.evaluations = e.index + 1;
        }
        self.out.send(Event::Evaluated { evaluation: e.clone() });
        self.progress(false);
        Ok(())
    }

    /// Take in the commands sent; while paused, wait for the next one. True when the
    /// search must stop now (asked to, or out of time).
    pub(super) fn should_stop(&self) -> bool {
        loop {
            while let Ok(c) = self.commands.try_recv() {
                self.apply(c);
            }
            let reason = if self.stop.load(Ordering::SeqCst) {
                Some(StopReason::Stopped)
            } else if self.max_seconds.is_some_and(|m| self.elapsed() >= m) {
                Some(StopReason::WallTime)
            } else {
                None
            };
            if reason.is_some() {
                self.live.borrow_mut().reason = reason;
                return true;
            }
            if !self.live.borrow().paused {
                return false;
            }
            self.progress(true);
            match self.commands.recv_timeout(Duration::from_millis(250)) {
                Ok(c) => self.apply(c),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.stop.store(true, Ordering::SeqCst),
            }
        }
    }

    fn apply(&self, c: Command) {
        match c {
            Command::Pause => self.live.borrow_mut().paused = true,
            Command::Resume => self.live.borrow_mut().paused = false,
            Command::Stop => self.stop.store(true, Ordering::SeqCst),
        }
    }

    /// Whether another generation may start: budget, generation limit, commands and time.
    pub(super) fn may_continue(&self, algo: &Algorithm) -> bool {
        let reason = if algo.state.evaluations >= self.budget {
            Some(StopReason::Evaluations)
        } else if self.generations.is_some_and(|g| algo.state.generation >= g) {
            Some(StopReason::Generations)
        } else {
            None
        };
        if reason.is_some() {
            self.live.borrow_mut().reason = reason;
            return false;
        }
        !self.should_stop()
    }

    /// After each generation: the front validated, checkpointed and reported.
    pub(super) fn generation_done(&self, algo: &Algorithm, problem: &PlanProblem, picker: Option<&mut Picker>, baselines: &mut [BaselineSolution]) -> Result<()> {
        let mut front = front_entries(problem);
        let hv = front_hypervolume(&front);
        {
            let mut live = self.live.borrow_mut();
            pick(picker, &mut front, &mut [], baselines, &live.store, self.out, false)?;
            live.history.push(hv);
            live.best_fitness = front.iter().map(|f| f.result.fitness).fold(f64::NEG_INFINITY, f64::max);
            live.front_size = front.len();
            live.hypervolume = hv;
            live.cache_hits = problem.cache_hits;
            live.unique = problem.unique();
            live.screened = problem.screened;
            live.generation = algo.state.generation;
            live.evaluations = algo.state.evaluations;
            live.store.checkpoint(&Checkpoint {
                state: algo.state.clone(),
                evaluated: problem.evaluated,
                cache_hits: problem.cache_hits,
                unique: problem.unique(),
                seconds: self.elapsed(),
                hypervolume: live.history.clone(),
            })?;
            live.store.write_front(&front)?;
        }
        let population = algo.state.population.iter().map(|i| [i.eval.objectives[0], problem.encoding.decode(&i.x).compression()]).collect();
        self.out.send(Event::Generation { generation: algo.state.generation, evaluations: algo.state.evaluations, front, population, hypervolume: hv });
        self.progress(true);
        Ok(())
    }

    /// The end of the session: the final front (a search stopped inside a generation
    /// keeps the front of what it evaluated) and candidates validated and written, the
    /// run's status set, `Done` sent.
    pub(super) fn finish(&self, problem: &PlanProblem, picker: Option<&mut Picker>, baselines: &mut [BaselineSolution], info: &mut RunInfo) -> Result<()> {
        let reason = self.live.borrow().reason.unwrap_or(StopReason::Stopped);
        let mut front = front_entries(problem);
        let mut candidates = if picker.is_some() { candidate_entries(problem, &front) } else { Vec::new() };
        let live = self.live.borrow();
        pick(picker, &mut front, &mut candidates, baselines, &live.store, self.out, true)?;
        live.store.write_front(&front)?;
        live.store.write_candidates(&candidates)?;
        let status = if reason == StopReason::Stopped { Status::Stopped } else { Status::Finished };
        live.store.set_status(info, status, None)?;
        self.out.send(Event::Done { reason, front, candidates, run_dir: live.store.dir.clone() });
        Ok(())
    }
}

/// Validation perplexities and the recommended flags of a front, candidates and the
/// baselines; at the `last` pick of a session the best of each size healed as well.
fn pick(
    picker: Option<&mut Picker>,
    front: &mut [FrontEntry],
    candidates: &mut [FrontEntry],
    baselines: &mut [BaselineSolution],
    store: &RunStore,
    out: &Outbox,
    last: bool,
) -> Result<()> {
    let Some(p) = picker else { return Ok(()) };
    let missing = p.missing(front, baselines) + p.missing(candidates, &[]);
    if missing > 0 {
        out.send(Event::Stage { message: format!("validation perplexity of {missing} new solutions") });
    }
    let before: Vec<(bool, Option<f64>)> = baselines.iter().map(|b| (b.recommended, b.healed_validation_perplexity)).collect();
    if last && p.heals() {
        let stage = p.healing_stage();
        let progress = |done: usize, of: usize| {
            out.send(Event::Stage { message: format!("{stage}: {done} of {of} fits done") });
        };
        p.annotate_final(front, candidates, baselines, &progress)?;
    } else {
        p.annotate(front, candidates, baselines)?;
    }
    if baselines.iter().map(|b| (b.recommended, b.healed_validation_perplexity)).ne(before) {
        store.write_baselines(baselines)?;
        out.send(Event::Baselines { solutions: baselines.to_vec() });
    }
    Ok(())
}

fn front_hypervolume(front: &[FrontEntry]) -> f64 {
    hypervolume(&front.iter().map(|f| [f.result.fitness, f.result.compression]).collect::<Vec<_>>())
}
