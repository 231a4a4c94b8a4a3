//! Request counts and latencies in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the latency histogram, seconds.
const BUCKETS: [f64; 11] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Default)]
struct Route {
    by_status: BTreeMap<u16, u64>,
    /// Cumulative counts per bucket bound, then the total.
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Per route (the matched pattern, not the raw path): counts by status and a latency histogram.
#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, Route>>,
}

impl Metrics {
    pub fn record(&self, route: &str, status: u16, seconds: f64) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let r = routes.entry(route.to_owned()).or_default();
        *r.by_status.entry(status).or_default() += 1;
        for (b, bound) in r.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *b += 1;
            }
        }
        r.count += 1;
        r.sum += seconds;
    }

    /// The exposition text, with the index's gauges.
    pub fn render(&self, images: usize, vector_rows: u64, joint_model: bool) -> String {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = writeln!(out, "# HELP imgsearch_requests_total HTTP requests by route and status.");
        let _ = writeln!(out, "# TYPE imgsearch_requests_total counter");
        for (route, r) in routes.iter() {
            for (status, n) in &r.by_status {
                let _ = writeln!(out, "imgsearch_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
            }
        }
        let _ = writeln!(out, "# HELP imgsearch_request_duration_seconds Request latency by route.");
        let _ = writeln!(out, "# TYPE imgsearch_request_duration_seconds histogram");
        for (route, r) in routes.iter() {
            for (b, bound) in r.buckets.iter().zip(BUCKETS) {
                let _ =
                    writeln!(out, "imgsearch_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {b}");
            }
            let _ =
                writeln!(out, "imgsearch_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}", r.count);
            let _ = writeln!(out, "imgsearch_request_duration_seconds_sum{{route=\"{route}\"}} {}", r.sum);
            let _ = writeln!(out, "imgsearch_request_duration_seconds_count{{route=\"{route}\"}} {}", r.count);
        }
        let _ = writeln!(
            out,
            "# HELP imgsearch_images Images in the index.\n# TYPE imgsearch_images gauge\nimgsearch_images {images}"
        );
        let _ = writeln!(out, "# HELP imgsearch_vector_rows Stored embedding rows.\n# TYPE imgsearch_vector_rows gauge\nimgsearch_vector_rows {vector_rows}");
        let _ = writeln!(out, "# HELP imgsearch_joint_model Whether a joint model is loaded.\n# TYPE imgsearch_joint_model gauge\nimgsearch_joint_model {}", joint_model as u8);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::default();
        m.record("/api/search", 200, 0.002);
        m.record("/api/search", 400, 0.02);
        let text = m.render(5, 6, false);
        assert!(text.contains("imgsearch_requests_total{route=\"/api/search\",status=\"200\"} 1"));
        assert!(text.contains("imgsearch_requests_total{route=\"/api/search\",status=\"400\"} 1"));
        assert!(text.contains("imgsearch_request_duration_seconds_bucket{route=\"/api/search\",le=\"0.0025\"} 1"));
        assert!(text.contains("imgsearch_request_duration_seconds_bucket{route=\"/api/search\",le=\"0.025\"} 2"));
        assert!(text.contains("imgsearch_images 5"));
    }
}
