//! The population report of a run (and, given the run before it, the transitions between them):
//! segment distribution per model, by age band and by service area, cost concentration (Lorenz curve, the top 1, 5
//! and 10 % of clients' share), the key clients' share, and the matrix of moves between
//! segments. It reads a run's output directory (`summary.json`, `Flag.ndjson`) and writes one
//! self-contained HTML page with inline SVG charts (nothing loaded from the network, no
//! script), plus the same figures as `report.json` and CSV files. It never reads input data and
//! never names a client: only counts leave it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub(crate) use crate::run::summary::{AgeBand, AreaCounts, CostConcentration, Share};
use crate::run::summary::{ModelSummary, Summary};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be read or written.
    #[error("cannot use {path}: {source}\nhint: give the output directory of a `segmentti run`")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not what a run writes.
    #[error(
        "{path}:{line}: {cause}\nhint: give the output directory of a `segmentti run` of this version"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line (1 for a JSON document).
        line: usize,
        /// What is wrong.
        cause: String,
    },
}

/// What the report shows, also written as `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The run directories, the current first.
    pub runs: Vec<String>,
    /// Per model of the current run.
    pub models: Vec<ModelReport>,
}

/// One model's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// Model id.
    pub model: String,
    /// Model version.
    pub version: String,
    /// As-of date.
    pub as_of: String,
    /// Clients segmented.
    pub clients: u64,
    /// Per segment, light to heavy.
    pub segments: Vec<Share>,
    /// Per overlay (key client).
    pub overlays: Vec<Share>,
    /// Clients per age band and segment.
    pub age_bands: Vec<AgeBand>,
    /// Clients per service area and segment; one client may be in several areas.
    pub service_areas: Vec<AreaCounts>,
    /// Cost concentration, when the model has a cost feature.
    pub cost_concentration: Option<CostConcentration>,
    /// Moves since the previous run, when one was given and holds this model.
    pub transitions: Option<Transitions>,
}

/// Moves between the previous run's segments and this run's.
#[derive(Debug, Clone, Serialize)]
pub struct Transitions {
    /// The previous run's as-of date.
    pub from_as_of: String,
    /// `matrix[from][to]`: clients, both indexed in segment order.
    pub matrix: Vec<Vec<u64>>,
    /// Clients who moved to a lighter segment (the goal).
    pub lighter: u64,
    /// Clients who stayed.
    pub same: u64,
    /// Clients who moved to a heavier segment.
    pub heavier: u64,
    /// Clients only in this run.
    pub new: u64,
    /// Clients only in the previous run.
    pub gone: u64,
}

/// Reads a run (and the one before it) into a report.
pub fn build(run: &Path, previous: Option<&Path>) -> Result<Report, ReportError> {
    let summary = read_summary(run)?;
    let before = match previous {
        Some(p) => Some((read_summary(p)?, segment_flags(p)?)),
        None => None,
    };
    let now = if before.is_some() {
        segment_flags(run)?
    } else {
        HashMap::new()
    };
    let models = summary
        .models
        .into_iter()
        .map(|m| {
            let transitions = before.as_ref().and_then(|(summary, flags)| {
                let from_as_of = summary
                    .models
                    .iter()
                    .find(|p| p.model == m.model)?
                    .as_of
                    .clone();
                Some(transitions(&m, from_as_of, flags, &now))
            });
            ModelReport {
                model: m.model,
                version: m.version,
                as_of: m.as_of,
                clients: m.clients,
                segments: m.segments,
                overlays: m.overlays,
                age_bands: m.age_bands,
                service_areas: m.service_areas,
                cost_concentration: m.cost_concentration,
                transitions,
            }
        })
        .collect();
    Ok(Report {
        runs: std::iter::once(run)
            .chain(previous)
            .map(|p| p.display().to_string())
            .collect(),
        models,
    })
}

/// Per (model, patient), the segment code of the client's segment Flag.
type SegmentFlags = HashMap<(String, String), String>;

fn transitions(
    m: &ModelSummary,
    from_as_of: String,
    before: &SegmentFlags,
    now: &SegmentFlags,
) -> Transitions {
    let index: HashMap<&str, usize> = m
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| (s.code.as_str(), i))
        .collect();
    let n = m.segments.len();
    let mut t = Transitions {
        from_as_of,
        matrix: vec![vec![0; n]; n],
        lighter: 0,
        same: 0,
        heavier: 0,
        new: 0,
        gone: 0,
    };
    for ((model, patient), code) in now.iter().filter(|((model, _), _)| *model == m.model) {
        let to = index.get(code.as_str()).copied();
        let from = before
            .get(&(model.clone(), patient.clone()))
            .and_then(|c| index.get(c.as_str()).copied());
        match (from, to) {
            (Some(f), Some(to)) => {
                t.matrix[f][to] += 1;
                match to.cmp(&f) {
                    std::cmp::Ordering::Less => t.lighter += 1,
                    std::cmp::Ordering::Equal => t.same += 1,
                    std::cmp::Ordering::Greater => t.heavier += 1,
                }
            }
            _ => t.new += 1,
        }
    }
    t.gone = before
        .keys()
        .filter(|(model, patient)| {
            *model == m.model && !now.contains_key(&(model.clone(), patient.clone()))
        })
        .count() as u64;
    t
}

fn read_summary(run: &Path) -> Result<Summary, ReportError> {
    let path = run.join("summary.json");
    let text = std::fs::read(&path).map_err(|source| ReportError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| ReportError::Invalid {
        path,
        line: e.line(),
        cause: e.to_string(),
    })
}

fn segment_flags(run: &Path) -> Result<SegmentFlags, ReportError> {
    #[derive(Deserialize)]
    struct Identifier {
        system: String,
        value: String,
    }
    #[derive(Deserialize)]
    struct Coding {
        code: String,
    }
    #[derive(Deserialize)]
    struct Code {
        coding: Vec<Coding>,
    }
    #[derive(Deserialize)]
    struct Flag {
        identifier: Vec<Identifier>,
        code: Code,
    }
    let path = run.join("Flag.ndjson");
    let text = std::fs::read_to_string(&path).map_err(|source| ReportError::Io {
        path: path.clone(),
        source,
    })?;
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let invalid = |cause: String| ReportError::Invalid {
            path: path.clone(),
            line: n + 1,
            cause,
        };
        let flag: Flag = serde_json::from_str(line).map_err(|e| invalid(e.to_string()))?;
        let Some(id) = flag
            .identifier
            .iter()
            .find(|i| i.system.ends_with("/identifier/segment-flag"))
        else {
            continue;
        };
        // The identifier's value is `model:patient:as_of`.
        let mut parts = id.value.splitn(3, ':');
        let (Some(model), Some(patient)) = (parts.next(), parts.next()) else {
            return Err(invalid(format!(
                "identifier `{}` is not model:patient:as-of",
                id.value
            )));
        };
        let code = flag
            .code
            .coding
            .first()
            .map(|c| c.code.clone())
            .unwrap_or_default();
        out.insert((model.to_owned(), patient.to_owned()), code);
    }
    Ok(out)
}

/// Writes `report.html`, `report.json` and the CSV files into `out`.
pub fn write(report: &Report, out: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ReportError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let json = serde_json::to_string_pretty(report).map_err(|e| io(out)(e.into()))?;
    let files = [
        ("report.html", html(report)),
        ("report.json", json),
        ("segments.csv", segments_csv(report)),
        ("age_bands.csv", age_bands_csv(report)),
        ("service_areas.csv", service_areas_csv(report)),
        ("cost.csv", cost_csv(report)),
        ("transitions.csv", transitions_csv(report)),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn segments_csv(r: &Report) -> String {
    let mut out = String::from("model,kind,code,display,clients,share,cost_share\n");
    for m in &r.models {
        for (kind, shares) in [("segment", &m.segments), ("overlay", &m.overlays)] {
            for s in shares {
                let _ = writeln!(
                    out,
                    "{},{kind},{},{},{},{:.6},{}",
                    csv_field(&m.model),
                    csv_field(&s.code),
                    csv_field(&s.display),
                    s.count,
                    s.share,
                    s.cost_share.map(|c| format!("{c:.6}")).unwrap_or_default()
                );
            }
        }
    }
    out
}

fn age_bands_csv(r: &Report) -> String {
    breakdown_csv(r, "age_band", |m| {
        m.age_bands
            .iter()
            .map(|b| (b.band.as_str(), b.counts.as_slice()))
            .collect()
    })
}

fn service_areas_csv(r: &Report) -> String {
    breakdown_csv(r, "service_area", |m| {
        m.service_areas
            .iter()
            .map(|a| (a.area.as_str(), a.counts.as_slice()))
            .collect()
    })
}

/// One line per model, row and segment of a breakdown of clients (`rows`: label, counts in
/// segment order), under the header `model,{column},segment,clients`.
fn breakdown_csv(
    r: &Report,
    column: &str,
    rows: impl Fn(&ModelReport) -> Vec<(&str, &[u64])>,
) -> String {
    let mut out = format!("model,{column},segment,clients\n");
    for m in &r.models {
        for (label, counts) in rows(m) {
            for (s, n) in m.segments.iter().zip(counts) {
                let _ = writeln!(
                    out,
                    "{},{},{},{n}",
                    csv_field(&m.model),
                    csv_field(label),
                    csv_field(&s.code)
                );
            }
        }
    }
    out
}

fn cost_csv(r: &Report) -> String {
    let mut out = String::from("model,client_share,cost_share\n");
    for m in &r.models {
        for (x, y) in m.cost_concentration.iter().flat_map(|c| &c.lorenz) {
            let _ = writeln!(out, "{},{x:.2},{y:.6}", csv_field(&m.model));
        }
    }
    out
}

fn transitions_csv(r: &Report) -> String {
    let mut out = String::from("model,from,to,clients\n");
    for m in &r.models {
        let Some(t) = &m.transitions else { continue };
        for (f, row) in t.matrix.iter().enumerate() {
            for (to, n) in row.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{},{},{},{n}",
                    csv_field(&m.model),
                    csv_field(&m.segments[f].code),
                    csv_field(&m.segments[to].code)
                );
            }
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Segment colours, light to heavy.
const COLOURS: [&str; 6] = [
    "#4e9a6a", "#8cb369", "#f4d35e", "#ee964b", "#d1495b", "#7b2d43",
];

fn colour(i: usize) -> &'static str {
    COLOURS[i.min(COLOURS.len() - 1)]
}

fn html(r: &Report) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>segmentti report</title>\n<style>\
body{font-family:system-ui,sans-serif;margin:2rem;max-width:62rem;color:#222}\
h2{border-bottom:1px solid #ccc;padding-bottom:.2rem}figure{margin:1rem 0}\
figcaption{font-size:.9rem;color:#555}table{border-collapse:collapse}td,th{padding:.2rem .5rem;border:1px solid #ddd;text-align:right}\
th:first-child,td:first-child{text-align:left}</style></head><body>\n<h1>Client segmentation report</h1>\n",
    );
    let _ = writeln!(out, "<p>Runs: {}</p>", esc(&r.runs.join(" ← ")));
    for m in &r.models {
        let id = esc(&m.model);
        let _ = writeln!(
            out,
            "<section><h2>{id} {} · as of {} · {} clients</h2>",
            esc(&m.version),
            esc(&m.as_of),
            m.clients
        );
        out.push_str(&distribution_svg(m));
        for o in &m.overlays {
            let _ = writeln!(
                out,
                "<p><strong>{}</strong>: {} clients ({:.1} %){}</p>",
                esc(&o.display),
                o.count,
                o.share * 100.0,
                o.cost_share
                    .map(|c| format!(", holding {:.1} % of the cost", c * 100.0))
                    .unwrap_or_default()
            );
        }
        if !m.age_bands.is_empty() {
            let rows: Vec<(String, &[u64])> = m
                .age_bands
                .iter()
                .map(|b| (b.band.clone(), b.counts.as_slice()))
                .collect();
            out.push_str(&stacked_svg(
                m,
                ("age", "segments by age band"),
                &rows,
                "Segments within each age band.",
            ));
        }
        if !m.service_areas.is_empty() {
            let rows: Vec<(String, &[u64])> = m
                .service_areas
                .iter()
                .map(|a| (a.display.clone(), a.counts.as_slice()))
                .collect();
            out.push_str(&stacked_svg(
                m,
                ("area", "segments by service area"),
                &rows,
                "Segments within each service area (a contact there in 12 months); a client who \
                 used several areas is counted in each.",
            ));
            out.push_str(&area_table(m));
        }
        if let Some(c) = &m.cost_concentration {
            out.push_str(&lorenz_svg(&m.model, c));
        }
        if let Some(t) = &m.transitions {
            out.push_str(&transitions_svg(m, t));
        }
        out.push_str("</section>\n");
    }
    out.push_str("</body></html>\n");
    out
}

fn distribution_svg(m: &ModelReport) -> String {
    let row = 26;
    let height = row * m.segments.len() + 10;
    let mut svg = format!(
        "<figure><svg id=\"dist-{}\" width=\"720\" height=\"{height}\" role=\"img\" aria-label=\"segment distribution\">",
        esc(&m.model)
    );
    for (i, s) in m.segments.iter().enumerate() {
        let y = i * row + 5;
        let w = (s.share * 340.0).round();
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\" font-size=\"13\">{}</text><rect x=\"310\" y=\"{y}\" width=\"{w}\" height=\"18\" fill=\"{}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{} ({:.1} %)</text>",
            y + 14,
            esc(&s.display),
            colour(i),
            315.0 + w,
            y + 14,
            s.count,
            s.share * 100.0
        );
    }
    svg.push_str("</svg><figcaption>Clients per segment, light to heavy.</figcaption></figure>\n");
    svg
}

/// One bar per row (label, clients per segment), split by segment, with a legend: the shape of
/// the segment distribution within each age band or service area. `id` is the figure's id
/// prefix and its accessible name.
fn stacked_svg(
    m: &ModelReport,
    (id, name): (&str, &str),
    rows: &[(String, &[u64])],
    caption: &str,
) -> String {
    let row = 26;
    let left = 210.0;
    let height = row * rows.len() + 30;
    let mut svg = format!(
        "<figure><svg id=\"{id}-{}\" width=\"720\" height=\"{height}\" role=\"img\" aria-label=\"{name}\">",
        esc(&m.model)
    );
    for (i, (label, counts)) in rows.iter().enumerate() {
        let y = i * row + 5;
        let total: u64 = counts.iter().sum();
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\" font-size=\"13\">{} ({total})</text>",
            y + 14,
            esc(label)
        );
        let mut x = left;
        for (s, &n) in counts.iter().enumerate() {
            let w = if total == 0 {
                0.0
            } else {
                (710.0 - left) * n as f64 / total as f64
            };
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"18\" fill=\"{}\"><title>{}: {n}</title></rect>",
                colour(s),
                esc(&m.segments[s].display)
            );
            x += w;
        }
    }
    let y = row * rows.len() + 20;
    let mut x = 0;
    for (s, seg) in m.segments.iter().enumerate() {
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{y}\" font-size=\"11\">{}</text>",
            y - 9,
            colour(s),
            x + 14,
            esc(&seg.code)
        );
        x += 24 + 8 * seg.code.chars().count();
    }
    let _ = writeln!(
        svg,
        "</svg><figcaption>{}</figcaption></figure>",
        esc(caption)
    );
    svg
}

/// The service-area breakdown as a table: clients per area and segment, with each area's total.
fn area_table(m: &ModelReport) -> String {
    let mut t = format!(
        "<table id=\"area-table-{}\"><tr><th>service area</th>",
        esc(&m.model)
    );
    for s in &m.segments {
        let _ = write!(t, "<th>{}</th>", esc(&s.code));
    }
    t.push_str("<th>clients</th></tr>");
    for a in &m.service_areas {
        let _ = write!(t, "<tr><td>{}</td>", esc(&a.display));
        for n in &a.counts {
            let _ = write!(t, "<td>{n}</td>");
        }
        let _ = write!(t, "<td>{}</td></tr>", a.counts.iter().sum::<u64>());
    }
    t.push_str("</table>\n");
    t
}

fn lorenz_svg(model: &str, c: &CostConcentration) -> String {
    let (size, pad) = (260.0, 30.0);
    let point = |(x, y): (f64, f64)| format!("{:.1},{:.1}", pad + x * size, pad + (1.0 - y) * size);
    let points: Vec<String> = c.lorenz.iter().map(|&p| point(p)).collect();
    format!(
        "<figure><svg id=\"lorenz-{}\" width=\"{w}\" height=\"{w}\" role=\"img\" aria-label=\"Lorenz curve of cost\">\
<rect x=\"{pad}\" y=\"{pad}\" width=\"{size}\" height=\"{size}\" fill=\"none\" stroke=\"#999\"/>\
<line x1=\"{pad}\" y1=\"{b}\" x2=\"{b}\" y2=\"{pad}\" stroke=\"#bbb\" stroke-dasharray=\"4\"/>\
<polyline points=\"{}\" fill=\"none\" stroke=\"#d1495b\" stroke-width=\"2\"/>\
<text x=\"{pad}\" y=\"{t}\" font-size=\"11\">share of clients, least costly first →</text>\
<text x=\"4\" y=\"20\" font-size=\"11\">share of cost</text></svg>\
<figcaption>Cost concentration: the top 1 % of clients hold {:.1} %, the top 5 % {:.1} %, the top 10 % {:.1} % of the cost.</figcaption></figure>\n",
        esc(model),
        points.join(" "),
        c.top_1 * 100.0,
        c.top_5 * 100.0,
        c.top_10 * 100.0,
        w = size + 2.0 * pad,
        b = pad + size,
        t = pad + size + 20.0,
    )
}

fn transitions_svg(m: &ModelReport, t: &Transitions) -> String {
    let n = m.segments.len();
    let cell = 56;
    let left = 150;
    let size = left + cell * n + 10;
    let max = t.matrix.iter().flatten().copied().max().unwrap_or(0).max(1);
    let mut svg = format!(
        "<figure><svg id=\"transitions-{}\" width=\"{size}\" height=\"{}\" role=\"img\" aria-label=\"transitions between segments\">",
        esc(&m.model),
        cell * n + 40
    );
    for (i, s) in m.segments.iter().enumerate() {
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text><text x=\"{}\" y=\"14\" font-size=\"12\">{}</text>",
            30 + i * cell + cell / 2,
            esc(&s.code),
            left + i * cell + 4,
            esc(&s.code)
        );
    }
    for (f, row) in t.matrix.iter().enumerate() {
        for (to, &v) in row.iter().enumerate() {
            let shade = 0.1 + 0.9 * v as f64 / max as f64;
            let _ = write!(
                svg,
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#3a6ea5\" fill-opacity=\"{shade:.2}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{v}</text>",
                left + to * cell,
                20 + f * cell,
                cell - 2,
                cell - 2,
                left + to * cell + 6,
                20 + f * cell + cell / 2
            );
        }
    }
    svg.push_str(&format!(
        "</svg><figcaption>Moves since {} (rows: then, columns: now): {} to a lighter segment, {} stayed, {} to a heavier one; {} new, {} gone.</figcaption></figure>\n",
        esc(&t.from_as_of),
        t.lighter,
        t.same,
        t.heavier,
        t.new,
        t.gone
    ));
    svg
}
