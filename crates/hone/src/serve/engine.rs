//! The decoding engine behind `hone serve`: one thread owns the model and runs continuous
//! batching. Between two decoding steps it admits waiting requests (prefilling each prompt into a
//! cache of its own), then advances every running sequence by one token in one batched step, so a
//! request never waits for another to finish. Each sequence keeps its own cache and position, and
//! its own adapter's updates ride along in the shared products.
//!
//! Results go back over a per-request channel. A client that goes away closes it; the engine sees
//! that before the next step and frees the slot. A model error or a panic fails only the requests
//! of that step, with an error that names nothing of any other request.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::{error::TryRecvError, UnboundedReceiver, UnboundedSender};

use super::adapters::ServedAdapter;
use super::error::ApiError;
use super::metrics::Metrics;
use crate::generate::{FinishReason, GenerateConfig, Sequence};
use crate::model::{Cache, Llama};
use crate::tokenizer::Tokenizer;

/// A request as the engine takes it.
pub struct Job {
    pub prompt_ids: Vec<u32>,
    pub adapter: Option<Arc<ServedAdapter>>,
    /// Sampling, stop strings and `max_new_tokens` (already capped by the context).
    pub generate: GenerateConfig,
    /// Completions to generate (`n`); choice `i` samples with seed `seed + i`.
    pub n: usize,
    /// Report each token's log-probability and this many alternatives (None: off).
    pub top_logprobs: Option<usize>,
    pub deadline: Instant,
    /// The name the request asked for, for metrics.
    pub label: String,
    pub received: Instant,
    pub events: UnboundedSender<Event>,
}

/// What the engine reports of a request.
#[derive(Debug)]
pub enum Event {
    /// One generated token of choice `choice`, and the text it made final (possibly empty: text
    /// that might begin a stop string waits).
    Token {
        choice: usize,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// Choice `choice` ended; `text` is the rest of its text held back until now.
    Finished {
        choice: usize,
        text: String,
        reason: FinishReason,
        completion_tokens: usize,
    },
    /// The request failed (time limit, model error); nothing more follows.
    Failed(ApiError),
}

/// A token's log-probability under the model (log-softmax of the raw logits) and the most likely
/// alternatives, most likely first.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// A running request: what its sequences share.
struct Running {
    job: Job,
    /// Sequences still decoding.
    rows_left: usize,
    first_token_seen: bool,
}

/// One sequence of the batch.
struct Row {
    request: Rc<std::cell::RefCell<Running>>,
    choice: usize,
    sequence: Sequence,
    cache: Cache,
    /// The token to feed at the next step.
    next: u32,
    budget: usize,
}

pub struct Engine {
    pub model: Arc<Llama>,
    pub tokenizer: Arc<Tokenizer>,
    pub metrics: Arc<Metrics>,
    /// Sequences decoded together at most.
    pub max_batch: usize,
    pub jobs: UnboundedReceiver<Job>,
}

impl Engine {
    /// Runs until every sender of jobs is gone.
    pub fn run(mut self) {
        let stop_ids = self.tokenizer.stop_ids();
        let mut waiting: VecDeque<Job> = VecDeque::new();
        let mut rows: Vec<Row> = Vec::new();
        loop {
            if rows.is_empty() && waiting.is_empty() {
                match self.jobs.blocking_recv() {
                    Some(job) => waiting.push_back(job),
                    None => return,
                }
            }
            loop {
                match self.jobs.try_recv() {
                    Ok(job) => waiting.push_back(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if rows.is_empty() && waiting.is_empty() => {
                        return
                    }
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            self.drop_abandoned(&mut waiting, &mut rows);
            while let Some(job) = waiting.front() {
                let fits = rows.is_empty() || rows.len() + job.n <= self.max_batch;
                if !fits {
                    break;
                }
                let job = waiting.pop_front().expect("front exists");
                self.admit(job, &stop_ids, &mut rows);
            }
            if !rows.is_empty() {
                self.step(&stop_ids, &mut rows);
            }
        }
    }

    /// Forgets waiting requests whose client left and rows whose client left or whose time ran
    /// out (telling those clients).
    fn drop_abandoned(&self, waiting: &mut VecDeque<Job>, rows: &mut Vec<Row>) {
        waiting.retain(|job| {
            let keep = !job.events.is_closed();
            if !keep {
                self.metrics.in_system.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
        let now = Instant::now();
        let mut dropped = Vec::new();
        rows.retain(|row| {
            let request = row.request.borrow();
            let expired = now >= request.job.deadline;
            let keep = !expired && !request.job.events.is_closed();
            if expired {
                let limit = request.job.deadline - request.job.received;
                let _ = (request.job.events)
                    .send(Event::Failed(ApiError::timeout(limit.as_secs_f64())));
            }
            if !keep {
                dropped.push(row.request.clone());
            }
            keep
        });
        for request in dropped {
            self.row_done(&request);
        }
    }

    /// Prefills `job`'s prompt and starts its sequences with their first tokens.
    fn admit(&self, job: Job, stop_ids: &[u32], rows: &mut Vec<Row>) {
        self.metrics.running.fetch_add(1, Ordering::Relaxed);
        let set = job.adapter.as_ref().map(|a| &a.set);
        let mut cache = self.model.new_cache();
        let prefilled = catch_unwind(AssertUnwindSafe(|| {
            self.model.prefill(&job.prompt_ids, &mut cache, set)
        }));
        let logits = match prefilled {
            Ok(Ok(logits)) => logits,
            Ok(Err(e)) => return self.fail_job(job, format!("the model failed: {e:#}")),
            Err(_) => return self.fail_job(job, "the model failed (a panic)".into()),
        };
        self.metrics.prompt_tokens(&job.label, job.prompt_ids.len());
        let seed = job.generate.sampling.seed;
        let budget = job.generate.max_new_tokens;
        let n = job.n;
        let request = Rc::new(std::cell::RefCell::new(Running {
            job,
            rows_left: n,
            first_token_seen: false,
        }));
        for choice in 0..n {
            let sequence = {
                let r = request.borrow();
                let mut cfg = r.job.generate.clone();
                cfg.sampling.seed = seed.wrapping_add(choice as u64);
                Sequence::new(&r.job.prompt_ids, &cfg)
            };
            let mut row = Row {
                request: request.clone(),
                choice,
                sequence,
                cache: cache.clone(),
                next: 0,
                budget,
            };
            if self.advance(&mut row, &logits, stop_ids) {
                rows.push(row);
            }
        }
    }

    /// One decoding step of every row; finished rows leave.
    fn step(&self, stop_ids: &[u32], rows: &mut Vec<Row>) {
        let tokens: Vec<u32> = rows.iter().map(|r| r.next).collect();
        let adapters: Vec<Option<Arc<ServedAdapter>>> = rows
            .iter()
            .map(|r| r.request.borrow().job.adapter.clone())
            .collect();
        let sets: Vec<_> = adapters
            .iter()
            .map(|a| a.as_ref().map(|a| &a.set))
            .collect();
        let mut caches: Vec<&mut Cache> = rows.iter_mut().map(|r| &mut r.cache).collect();
        let stepped = catch_unwind(AssertUnwindSafe(|| {
            self.model.decode_step(&tokens, &mut caches, &sets)
        }));
        let logits = match stepped {
            Ok(Ok(logits)) => logits,
            failed => {
                let message = match failed {
                    Ok(Err(e)) => format!("the model failed: {e:#}"),
                    _ => "the model failed (a panic)".to_string(),
                };
                for row in rows.drain(..) {
                    self.fail_row(&row, &message);
                }
                return;
            }
        };
        let vocab = logits.len() / rows.len();
        let mut index = 0;
        rows.retain_mut(|row| {
            let row_logits = &logits[index * vocab..(index + 1) * vocab];
            index += 1;
            self.advance(row, row_logits, stop_ids)
        });
    }

    /// Picks the row's next token from `logits` and reports it; false when the row is done.
    fn advance(&self, row: &mut Row, logits: &[f32], stop_ids: &[u32]) -> bool {
        let ignore_eos = row.request.borrow().job.generate.ignore_eos;
        let stop_ids: &[u32] = if ignore_eos { &[] } else { stop_ids };
        let (next, text) = match row.sequence.step(logits, &self.tokenizer, stop_ids) {
            Ok((next, text)) => (next, text.to_string()),
            Err(e) => {
                self.fail_row(row, &format!("decoding the output failed: {e:#}"));
                return false;
            }
        };
        row.next = next;
        let mut request = row.request.borrow_mut();
        let label = request.job.label.clone();
        self.metrics.generation_tokens(&label, 1);
        if !request.first_token_seen {
            request.first_token_seen = true;
            let seconds = request.job.received.elapsed().as_secs_f64();
            self.metrics.time_to_first_token(&label, seconds);
        }
        let logprob = request
            .job
            .top_logprobs
            .map(|k| token_logprob(&self.tokenizer, logits, next, k));
        let events = &request.job.events;
        let choice = row.choice;
        let _ = events.send(Event::Token {
            choice,
            text,
            logprob,
        });
        let done = row.sequence.is_finished() || row.sequence.generated() >= row.budget;
        if !done {
            return true;
        }
        let text = row.sequence.finish().to_string();
        let reason = row.sequence.finish_reason().unwrap_or(FinishReason::Length);
        let completion_tokens = row.sequence.generated();
        let _ = events.send(Event::Finished {
            choice,
            text,
            reason,
            completion_tokens,
        });
        drop(request);
        self.row_done(&row.request);
        false
    }

    fn fail_row(&self, row: &Row, message: &str) {
        let request = row.request.borrow();
        let _ = (request.job.events).send(Event::Failed(ApiError::internal(message)));
        drop(request);
        self.row_done(&row.request);
    }

    fn fail_job(&self, job: Job, message: String) {
        let _ = job.events.send(Event::Failed(ApiError::internal(message)));
        self.request_done();
    }

    /// One row of `request` left the batch; the request is done with its last row.
    fn row_done(&self, request: &Rc<std::cell::RefCell<Running>>) {
        let mut request = request.borrow_mut();
        request.rows_left -= 1;
        if request.rows_left == 0 {
            self.request_done();
        }
    }

    /// An admitted request left: its slot and its place in the queue's count are free.
    fn request_done(&self) {
        self.metrics.running.fetch_sub(1, Ordering::Relaxed);
        self.metrics.in_system.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `chosen`'s log-probability from `logits` and the `k` most likely tokens'.
fn token_logprob(tokenizer: &Tokenizer, logits: &[f32], chosen: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let text = |id: u32| tokenizer.decode(&[id], false).unwrap_or_default();
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(order.len());
    if k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| {
            logits[b as usize].total_cmp(&logits[a as usize])
        });
    }
    let mut top: Vec<u32> = order[..k].to_vec();
    top.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    TokenLogprob {
        token: text(chosen),
        logprob: logits[chosen as usize] - log_sum,
        top: top
            .into_iter()
            .map(|id| (text(id), logits[id as usize] - log_sum))
            .collect(),
    }
}
