//! The relay's metrics, and the small HTTP listener that serves them in the Prometheus
//! text format (`GET /metrics`) beside a liveness answer (`GET /healthz`).
//!
//! Everything is counted whether or not a listener runs: the counters are atomics, and
//! the gauges are set from the pairing machine after each of its inputs.

use std::io;
use std::time::{Duration, Instant};

use futures_util::{AsyncReadExt, AsyncWriteExt};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::rt::Rt;

/// One label, with a value from a fixed set (a refusal's kind, a pair's outcome).
type Label = [(&'static str, &'static str); 1];

/// The relay's counters, gauges and histograms.
pub(crate) struct RelayMetrics {
    registry: Registry,
    pub connections_open: Gauge,
    pub connections: Counter,
    pub refused: Family<Label, Counter>,
    pub pairs_waiting: Gauge,
    pub pairs_active: Gauge,
    pub pairs_ended: Family<Label, Counter>,
    pub bytes_forwarded: Counter,
    pub stun_requests: Family<Label, Counter>,
    pub handshake_seconds: Histogram,
    pub pairing_seconds: Histogram,
}

impl std::fmt::Debug for RelayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayMetrics").finish_non_exhaustive()
    }
}

impl RelayMetrics {
    pub(crate) fn new() -> RelayMetrics {
        let mut registry = Registry::with_prefix("p2p_copy_relay");
        // The registry keeps clones, which share their values with the fields.
        fn add<M: prometheus_client::registry::Metric + Clone>(
            r: &mut Registry,
            name: &str,
            help: &str,
            m: M,
        ) -> M {
            r.register(name, help, m.clone());
            m
        }
        let r = &mut registry;
        let connections_open = add(
            r,
            "connections_open",
            "Connections open now",
            Gauge::default(),
        );
        let connections = add(r, "connections", "Connections accepted", Counter::default());
        let refused = add(
            r,
            "connections_refused",
            "Connections refused or closed before pairing, by reason",
            Family::default(),
        );
        let pairs_waiting = add(
            r,
            "pairs_waiting",
            "Clients waiting for their peer",
            Gauge::default(),
        );
        let pairs_active = add(
            r,
            "pairs_active",
            "Pairs forwarding data now",
            Gauge::default(),
        );
        let pairs_ended = add(
            r,
            "pairs_ended",
            "Pairs ended, by outcome (completed, lost, limit, shutting_down)",
            Family::default(),
        );
        let bytes_forwarded = add(
            r,
            "forwarded_bytes",
            "Bytes forwarded between the peers of a pair, both directions",
            Counter::default(),
        );
        let stun_requests = add(
            r,
            "stun_requests",
            "STUN Binding requests, by result (answered, rate_limited)",
            Family::default(),
        );
        // 1 ms to about 33 s: a handshake on loopback up to a slow TLS client.
        let handshake_seconds = add(
            r,
            "handshake_seconds",
            "Time from accepting a connection to the end of its TLS and WebSocket handshake",
            Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        );
        // 10 ms to about 5.8 h: peers that start together up to the longest wait.
        let pairing_seconds = add(
            r,
            "pairing_seconds",
            "Time the first client of a pair waited for the second",
            Histogram::new(exponential_buckets(0.01, 2.0, 22)),
        );
        RelayMetrics {
            registry,
            connections_open,
            connections,
            refused,
            pairs_waiting,
            pairs_active,
            pairs_ended,
            bytes_forwarded,
            stun_requests,
            handshake_seconds,
            pairing_seconds,
        }
    }

    /// Count a refusal of this kind (a label from a fixed set).
    pub(crate) fn refuse(&self, kind: &'static str) {
        self.refused.get_or_create(&[("reason", kind)]).inc();
    }

    /// Count a pair's end with this outcome.
    pub(crate) fn pair_ended(&self, outcome: &'static str) {
        self.pairs_ended
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    /// Count a STUN request and whether it was answered.
    pub(crate) fn stun(&self, answered: bool) {
        let result = if answered { "answered" } else { "rate_limited" };
        self.stun_requests
            .get_or_create(&[("result", result)])
            .inc();
    }

    /// The metrics in the Prometheus (OpenMetrics) text format.
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Longest a metrics request may take to arrive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read; a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;

/// Answer HTTP requests on `listener` for ever: `/metrics` with the metrics, `/healthz`
/// with `ok`, anything else with 404. One connection at a time is enough for a scraper
/// and a health check, and keeps a flood from costing more than one socket.
pub(crate) async fn serve<R: Rt>(
    rt: R,
    listener: R::TcpListener,
    metrics: std::sync::Arc<RelayMetrics>,
) {
    loop {
        let (mut tcp, _) = match R::accept(&listener).await {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn!("metrics: accepting a connection failed: {e}");
                rt.sleep_until(Instant::now() + Duration::from_millis(100))
                    .await;
                continue;
            }
        };
        let answering = async {
            let path = read_path(&mut tcp).await?;
            let (status, kind, body) = match path.as_deref() {
                Some("/metrics") => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.render(),
                ),
                Some("/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".into()),
                Some(_) => (
                    "404 Not Found",
                    "text/plain; charset=utf-8",
                    "not found\n".into(),
                ),
                None => (
                    "400 Bad Request",
                    "text/plain; charset=utf-8",
                    "bad request\n".into(),
                ),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            );
            tcp.write_all(head.as_bytes()).await?;
            tcp.write_all(body.as_bytes()).await?;
            tcp.close().await
        };
        let deadline = rt.sleep_until(Instant::now() + REQUEST_TIMEOUT);
        let _ = futures_util::future::select(Box::pin(answering), Box::pin(deadline)).await;
    }
}

/// The path of a `GET` (or `HEAD`) request, without its query; `None` for anything
/// else.
async fn read_path(tcp: &mut (impl futures_io::AsyncRead + Unpin)) -> io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.split("\r\n").next().unwrap_or("").split(' ');
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return Ok(None);
    };
    if method != "GET" && method != "HEAD" {
        return Ok(None);
    }
    let path = target.split('?').next().unwrap_or("");
    Ok(Some(path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_metric_with_its_labels_and_values() {
        let m = RelayMetrics::new();
        m.connections.inc();
        m.connections_open.set(3);
        m.refuse("rate_limit");
        m.pair_ended("completed");
        m.bytes_forwarded.inc_by(1234);
        m.stun(true);
        m.handshake_seconds.observe(0.002);
        m.pairing_seconds.observe(0.5);
        let text = m.render();
        for line in [
            "p2p_copy_relay_connections_total 1",
            "p2p_copy_relay_connections_open 3",
            "p2p_copy_relay_connections_refused_total{reason=\"rate_limit\"} 1",
            "p2p_copy_relay_pairs_ended_total{outcome=\"completed\"} 1",
            "p2p_copy_relay_forwarded_bytes_total 1234",
            "p2p_copy_relay_stun_requests_total{result=\"answered\"} 1",
            "p2p_copy_relay_handshake_seconds_count 1",
            "p2p_copy_relay_pairing_seconds_sum 0.5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
