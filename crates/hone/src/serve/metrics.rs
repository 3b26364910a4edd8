//! Counters for `GET /metrics`, in Prometheus' text format (0.0.4), labelled by model (the base or
//! an adapter's name). Written by hand: a handful of counters and one histogram do not need a
//! metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the time-to-first-token histogram's buckets.
const TTFT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
struct PerModel {
    /// By HTTP status.
    requests: BTreeMap<u16, u64>,
    prompt_tokens: u64,
    generation_tokens: u64,
    ttft_buckets: [u64; TTFT_BUCKETS.len()],
    ttft_count: u64,
    ttft_sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    models: Mutex<BTreeMap<String, PerModel>>,
    /// Requests accepted and not yet finished.
    pub in_system: AtomicUsize,
    /// Of those, the ones decoding (admitted to the batch).
    pub running: AtomicUsize,
}

impl Metrics {
    fn with(&self, model: &str, f: impl FnOnce(&mut PerModel)) {
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        f(models.entry(model.to_string()).or_default());
    }

    /// A finished request and its HTTP status.
    pub fn request(&self, model: &str, status: u16) {
        self.with(model, |m| *m.requests.entry(status).or_default() += 1);
    }

    pub fn prompt_tokens(&self, model: &str, n: usize) {
        self.with(model, |m| m.prompt_tokens += n as u64);
    }

    pub fn generation_tokens(&self, model: &str, n: usize) {
        self.with(model, |m| m.generation_tokens += n as u64);
    }

    pub fn time_to_first_token(&self, model: &str, seconds: f64) {
        self.with(model, |m| {
            for (bucket, &le) in m.ttft_buckets.iter_mut().zip(&TTFT_BUCKETS) {
                if seconds <= le {
                    *bucket += 1;
                }
            }
            m.ttft_count += 1;
            m.ttft_sum += seconds;
        });
    }

    /// Requests accepted but not yet decoding.
    pub fn queue_depth(&self) -> usize {
        let running = self.running.load(Ordering::Relaxed);
        self.in_system
            .load(Ordering::Relaxed)
            .saturating_sub(running)
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let mut family =
            |name: &str, kind: &str, help: &str, lines: &mut dyn FnMut(&mut String)| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                lines(&mut out);
            };
        family(
            "hone_requests_total",
            "counter",
            "Requests answered, by model and HTTP status.",
            &mut |out| {
                for (model, m) in models.iter() {
                    for (status, n) in &m.requests {
                        let _ = writeln!(
                            out,
                            "hone_requests_total{{model=\"{}\",status=\"{status}\"}} {n}",
                            escape(model)
                        );
                    }
                }
            },
        );
        let name = "hone_prompt_tokens_total";
        family(name, "counter", "Prompt tokens processed.", &mut |out| {
            for (model, m) in models.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{model=\"{}\"}} {}",
                    escape(model),
                    m.prompt_tokens
                );
            }
        });
        let name = "hone_generation_tokens_total";
        family(name, "counter", "Tokens generated.", &mut |out| {
            for (model, m) in models.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{model=\"{}\"}} {}",
                    escape(model),
                    m.generation_tokens
                );
            }
        });
        let name = "hone_time_to_first_token_seconds";
        family(
            name,
            "histogram",
            "Seconds from a request's arrival to its first token.",
            &mut |out| {
                for (model, m) in models.iter() {
                    let model = escape(model);
                    for (n, le) in m.ttft_buckets.iter().zip(TTFT_BUCKETS) {
                        let _ = writeln!(out, "{name}_bucket{{model=\"{model}\",le=\"{le}\"}} {n}");
                    }
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{model=\"{model}\",le=\"+Inf\"}} {}",
                        m.ttft_count
                    );
                    let _ = writeln!(out, "{name}_sum{{model=\"{model}\"}} {}", m.ttft_sum);
                    let _ = writeln!(out, "{name}_count{{model=\"{model}\"}} {}", m.ttft_count);
                }
            },
        );
        let gauges = [
            (
                "hone_queue_depth",
                "Requests waiting for a decoding slot.",
                self.queue_depth(),
            ),
            (
                "hone_running_requests",
                "Requests decoding.",
                self.running.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            family(name, "gauge", help, &mut |out| {
                let _ = writeln!(out, "{name} {value}");
            });
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_each_family_once_and_cumulative_buckets() {
        let m = Metrics::default();
        m.request("base", 200);
        m.request("base", 200);
        m.request("sql", 400);
        m.prompt_tokens("base", 12);
        m.time_to_first_token("base", 0.07);
        m.time_to_first_token("base", 3.0);
        let text = m.render();
        assert!(text.contains("hone_requests_total{model=\"base\",status=\"200\"} 2\n"));
        assert!(text.contains("hone_requests_total{model=\"sql\",status=\"400\"} 1\n"));
        assert!(text.contains("hone_prompt_tokens_total{model=\"base\"} 12\n"));
        let bucket = |le: &str| {
            format!("hone_time_to_first_token_seconds_bucket{{model=\"base\",le=\"{le}\"}}")
        };
        assert!(text.contains(&format!("{} 0\n", bucket("0.05"))));
        assert!(text.contains(&format!("{} 1\n", bucket("0.1"))));
        assert!(text.contains(&format!("{} 2\n", bucket("5"))));
        assert!(text.contains(&format!("{} 2\n", bucket("+Inf"))));
        assert_eq!(
            text.matches("# TYPE hone_requests_total counter").count(),
            1
        );
        assert!(text.contains("hone_queue_depth 0\n"));
    }
}
