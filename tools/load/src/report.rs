//! Output: `result.json`, `summary.md` and `latency-cdf.svg`.

use std::path::Path;

use hdrhistogram::Histogram;

use crate::run::RunResult;

/// Points drawn on the latency CDF. Default 200.
pub const CDF_POINTS: usize = 200;

/// Markdown summary of one run.
pub fn markdown(r: &RunResult) -> String {
    let t = &r.totals;
    let mut s = String::new();
    s.push_str(&format!(
        "# ils-load: `{}` scenario against {}\n\n",
        r.scenario, r.url
    ));
    s.push_str("| metric | value |\n| --- | --- |\n");
    let rows: Vec<(&str, String)> = vec![
        (
            "viewers connected / requested",
            format!("{} / {}", r.viewers_connected, r.viewers_requested),
        ),
        ("publishers", r.publishers_connected.to_string()),
        ("join failures", r.join_failures.to_string()),
        (
            "join time p50 / p99",
            format!("{:.1} ms / {:.1} ms", r.join_p50_ms, r.join_p99_ms),
        ),
        (
            "join rate achieved",
            format!("{:.0} /s", r.join_rate_achieved),
        ),
        ("steady window", format!("{:.1} s", r.window_s)),
        ("pps in (publishers → SFU)", format!("{:.0}", r.pps_in)),
        ("pps out (SFU → viewers)", format!("{:.0}", r.pps_out)),
        (
            "Mb/s in / out",
            format!("{:.2} / {:.2}", r.mbps_in, r.mbps_out),
        ),
        (
            "loss",
            format!("{:.4} % ({} of {})", r.loss_percent, t.lost, t.expected),
        ),
        (
            "duplicates / reordered / recovered by NACK",
            format!("{} / {} / {}", t.duplicates, t.reordered, t.recovered),
        ),
        (
            "SFU-added latency p50 / p99 / p99.9 / max",
            format!(
                "{:.0} / {:.0} / {:.0} / {:.0} µs ({} samples)",
                r.latency.p50_us,
                r.latency.p99_us,
                r.latency.p999_us,
                r.latency.max_us,
                r.latency.count
            ),
        ),
        (
            "engine CPU (pid)",
            format!("{:.1} % ({:?})", r.engine_cpu.percent, r.engine_cpu.pid),
        ),
        (
            "engine CPU per delivered packet",
            format!("{:.2} µs", r.engine_cpu.us_per_packet),
        ),
        (
            "control CPU (pid)",
            format!("{:.1} % ({:?})", r.control_cpu.percent, r.control_cpu.pid),
        ),
        (
            "load tool CPU (process, window) / I/O thread (run)",
            format!(
                "{:.1} % / {:.1} %",
                r.tool_cpu_percent, r.io_thread_cpu_percent
            ),
        ),
        (
            "load tool RSS per endpoint",
            format!("{:.0} KiB", r.rss_per_viewer_kib),
        ),
        (
            "video packets per layer q / h / f",
            format!(
                "{} / {} / {}",
                r.layers_received[0], r.layers_received[1], r.layers_received[2]
            ),
        ),
        (
            "RR / NACK / PLI / transport-cc sent",
            format!(
                "{} / {} / {} / {}",
                t.rr_sent, t.nacks_sent, t.plis_sent, t.twcc_sent
            ),
        ),
        (
            "consent checks sent / answered",
            format!("{} / {}", t.consent_sent, t.consent_ok),
        ),
        (
            "decrypt failures / no probe / send errors",
            format!(
                "{} / {} / {}",
                t.decrypt_failures, t.no_probe, t.send_errors
            ),
        ),
    ];
    for (k, v) in rows {
        s.push_str(&format!("| {k} | {v} |\n"));
    }
    if !r.join_errors.is_empty() {
        s.push_str("\nJoin errors (first 20):\n\n");
        for e in &r.join_errors {
            s.push_str(&format!("* {}\n", e.trim()));
        }
    }
    s
}

/// (latency µs, cumulative fraction) points of the CDF.
pub fn cdf_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    (0..=CDF_POINTS)
        .map(|i| {
            let q = i as f64 / CDF_POINTS as f64;
            (h.value_at_quantile(q) as f64 / 1000.0, q)
        })
        .collect()
}

/// Write an SVG latency CDF (log-scaled x axis).
pub fn latency_cdf_svg(path: &Path, h: &Histogram<u64>) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let pts = cdf_points(h);
    let max = pts.last().map(|p| p.0).unwrap_or(1.0).max(2.0);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("SFU-added latency CDF", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((1f64..max * 1.1).log_scale(), 0f64..1f64)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("latency (µs)")
        .y_desc("fraction of packets")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(
            pts.into_iter().map(|(x, y)| (x.max(1.0), y)),
            &BLUE,
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Write result.json, summary.md and latency-cdf.svg into `dir`.
pub fn write_all(dir: &Path, r: &RunResult, h: &Histogram<u64>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("result.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(dir.join("summary.md"), markdown(r))?;
    latency_cdf_svg(&dir.join("latency-cdf.svg"), h)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_all_outputs() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for v in [10_000u64, 20_000, 50_000, 1_000_000] {
            h.record(v).unwrap();
        }
        let pts = cdf_points(&h);
        assert_eq!(pts.len(), CDF_POINTS + 1);
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0));
        let dir = std::env::temp_dir().join(format!("ils-load-report-{}", std::process::id()));
        let r = RunResult::default();
        write_all(&dir, &r, &h).unwrap();
        let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
        assert!(md.contains("SFU-added latency"));
        let js: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).unwrap())
                .unwrap();
        assert!(js["latency"]["p99_us"].is_number());
        assert!(std::fs::read_to_string(dir.join("latency-cdf.svg"))
            .unwrap()
            .contains("<svg"));
        let _ = std::fs::remove_dir_all(dir);
        assert!(cdf_points(&Histogram::<u64>::new(3).unwrap()).is_empty());
    }
}
