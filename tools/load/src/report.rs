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
            "publisher: NACKs in / retransmitted / not in history / dropped on purpose",
            format!(
                "{} / {} / {} / {}",
                t.nacks_in, t.retransmits_sent, t.retransmit_misses, t.publisher_dropped
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

/// One step of a ramp as `bench/run` writes it to `load.jsonl` (one JSON object per line):
/// the server measured (`ils`, `janus`, `medooze`; default `ils`), viewers and what was seen.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct RampRow {
    /// Server name (a series of the plots).
    #[serde(default = "default_server")]
    pub server: String,
    /// Viewers requested.
    pub viewers: f64,
    /// Viewers that connected (the x of the plots when present: a step whose joins failed is
    /// drawn where it really was).
    #[serde(default)]
    pub connected: Option<f64>,
    /// Packets per second delivered to viewers.
    #[serde(default)]
    pub pps_out: Option<f64>,
    /// Server (engine) CPU percent of one core.
    #[serde(default)]
    pub engine_cpu_pct: Option<f64>,
    /// p99 SFU-added latency, µs.
    #[serde(default)]
    pub p99_us: Option<f64>,
    /// Loss percent.
    #[serde(default)]
    pub loss_pct: Option<f64>,
}

fn default_server() -> String {
    "ils".into()
}

/// Most lines [`parse_ramp`] reads. Default 10,000 (a ramp has tens); bounds memory on a
/// wrong input file to ≈ 1 MiB.
pub const MAX_RAMP_ROWS: usize = 10_000;

/// Parse `load.jsonl`: one [`RampRow`] per line; blank lines skipped; a bad line is an error
/// naming its line number.
pub fn parse_ramp(text: &str) -> anyhow::Result<Vec<RampRow>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        anyhow::ensure!(
            rows.len() < MAX_RAMP_ROWS,
            "more than {MAX_RAMP_ROWS} rows: is this a load.jsonl from bench/run?"
        );
        let r: RampRow = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!("line {}: {e} (expected bench/run's load.jsonl)", i + 1)
        })?;
        anyhow::ensure!(
            r.viewers.is_finite() && r.viewers >= 0.0,
            "line {}: viewers must be a non-negative number",
            i + 1
        );
        rows.push(r);
    }
    Ok(rows)
}

/// Series colours, one per server in order of first appearance.
const SERIES: [plotters::style::RGBColor; 4] = [
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(214, 39, 40),
    plotters::style::RGBColor(44, 160, 44),
    plotters::style::RGBColor(148, 103, 189),
];

/// Draw one metric against viewers, a line per server, into an SVG at `path`; `log_y` draws
/// the y axis in decades (latency spans µs to seconds). Rows without the metric (or, with
/// `log_y`, not positive) are skipped; nothing to draw still writes an empty, labelled chart.
pub fn ramp_svg(
    path: &Path,
    rows: &[RampRow],
    title: &str,
    y_desc: &str,
    metric: fn(&RampRow) -> Option<f64>,
    log_y: bool,
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let mut servers: Vec<&str> = Vec::new();
    for r in rows {
        if !servers.contains(&r.server.as_str()) {
            servers.push(&r.server);
        }
    }
    let pts = |s: &str| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.server == s)
            .filter_map(|r| {
                let x = r.connected.filter(|c| c.is_finite()).unwrap_or(r.viewers);
                metric(r)
                    .filter(|y| y.is_finite() && (!log_y || *y > 0.0))
                    .map(|y| (x, if log_y { y.log10() } else { y }))
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let all: Vec<(f64, f64)> = servers.iter().flat_map(|s| pts(s)).collect();
    let xmax = all.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let ymax = if log_y {
        all.iter().map(|p| p.1).fold(1.0, f64::max).ceil()
    } else {
        all.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1
    };
    let ymin = if log_y {
        all.iter()
            .map(|p| p.1)
            .fold(ymax, f64::min)
            .floor()
            .min(ymax - 1.0)
    } else {
        0.0
    };
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, ymin..ymax)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("viewers connected")
        .y_desc(y_desc)
        .y_label_formatter(&|v| {
            if log_y {
                format!("{:.0}", 10f64.powf(*v))
            } else {
                format!("{v:.0}")
            }
        })
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, s) in servers.iter().enumerate() {
        let c = SERIES[i % SERIES.len()];
        let p = pts(s);
        chart
            .draw_series(LineSeries::new(p.clone(), c.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(*s)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
        chart
            .draw_series(p.into_iter().map(|xy| Circle::new(xy, 3, c.filled())))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// One ramp plot: file name, title, y axis, metric.
type Plot = (
    &'static str,
    &'static str,
    &'static str,
    fn(&RampRow) -> Option<f64>,
    bool,
);

/// The ramp plots of `bench/run`: pps-vs-viewers.svg, cpu-vs-viewers.svg,
/// p99-vs-viewers.svg in `dir`. Returns the paths written.
pub fn ramp_plots(dir: &Path, rows: &[RampRow]) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let plots: [Plot; 3] = [
        (
            "pps-vs-viewers.svg",
            "Packets/s delivered to viewers",
            "packets/s",
            |r| r.pps_out,
            false,
        ),
        (
            "cpu-vs-viewers.svg",
            "Server CPU (one core = 100 %)",
            "CPU %",
            |r| r.engine_cpu_pct,
            false,
        ),
        (
            "p99-vs-viewers.svg",
            "p99 SFU-added latency (log scale)",
            "µs",
            |r| r.p99_us,
            true,
        ),
    ];
    let mut out = Vec::new();
    for (name, title, y, f, log_y) in plots {
        let p = dir.join(name);
        ramp_svg(&p, rows, title, y, f, log_y)?;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod ramp_tests {
    use super::*;

    #[test]
    fn ramp_rows_parse_and_plot_per_server() {
        let text = r#"{"viewers":250,"pps_out":55581.5,"engine_cpu_pct":25.6,"p99_us":900,"loss_pct":0}

{"server":"janus","viewers":250,"pps_out":50000,"engine_cpu_pct":80,"p99_us":null}
{"viewers":1000,"connected":1000,"pps_out":222000,"engine_cpu_pct":90.5,"p99_us":3000}"#;
        let rows = parse_ramp(text).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].server, "ils");
        assert_eq!(rows[1].server, "janus");
        assert_eq!(rows[1].p99_us, None);
        let dir = std::env::temp_dir().join(format!("ils-plot-test-{}", std::process::id()));
        let files = ramp_plots(&dir, &rows).unwrap();
        assert_eq!(files.len(), 3);
        for f in &files {
            let svg = std::fs::read_to_string(f).unwrap();
            assert!(svg.contains("<svg"), "{}", f.display());
            assert!(
                svg.contains("janus") && svg.contains("ils"),
                "legend in {}",
                f.display()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_ramp_lines_are_errors_naming_the_line() {
        for bad in [
            "{",
            "[]",
            r#"{"viewers":"x"}"#,
            r#"{"pps_out":1}"#,
            r#"{"viewers":-1}"#,
        ] {
            let text = format!("{{\"viewers\":1}}\n{bad}\n");
            let e = parse_ramp(&text).unwrap_err().to_string();
            assert!(e.contains("line 2"), "{bad}: {e}");
        }
    }
}
