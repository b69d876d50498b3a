//! Interop writers for viewers people already use: speedscope's file
//! format (<https://www.speedscope.app/file-format-schema.json>), and the
//! Chrome `.cpuprofile` format (DevTools' `Profiler.Profile`), which the
//! Firefox Profiler, Chrome DevTools and speedscope all import.
//!
//! Owns only the mapping from a `ProfilesData` to those JSON documents;
//! frames are named the way [`crate::fold`] names them, so every view of a
//! profile shows the same functions.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::builder::FrameType;
use crate::folded::process_label;
use crate::otlp::profiles::v1development::{Location, ProfilesData};
use crate::view::{sample_weight, ProfileView};

/// One frame as the viewers show it: a function (with file and line when
/// known), a kernel function, or an address in a mapping.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FrameKey {
    name: String,
    file: String,
    line: i64,
}

/// The frames of one location, caller first (an inlined function after the
/// function it was inlined into).
fn location_frames(view: &ProfileView<'_>, location: &Location, out: &mut Vec<FrameKey>) {
    let kernel = view.frame_type(location) == FrameType::Kernel;
    if location.lines.is_empty() {
        let name = match view.mapping_name(location) {
            Some(m) if !m.is_empty() => {
                let base = m.rsplit('/').next().unwrap_or(m);
                format!("[{base}+{:#x}]", location.address)
            }
            _ => format!("{:#x}", location.address),
        };
        out.push(FrameKey {
            name: if kernel {
                format!("{name} [kernel]")
            } else {
                name
            },
            file: String::new(),
            line: 0,
        });
        return;
    }
    for l in view.lines(location).rev() {
        let name = if l.function.is_empty() {
            "[unknown]"
        } else {
            l.function
        };
        out.push(FrameKey {
            name: if kernel {
                format!("{name} [kernel]")
            } else {
                name.to_owned()
            },
            file: l.file.to_owned(),
            line: l.line,
        });
    }
}

/// The sample type drawn: the first profile's, as [`crate::fold`] takes.
fn first_type(view: &ProfileView<'_>) -> Option<(String, String)> {
    view.profiles()
        .next()
        .map(|(_, p)| view.value_type(p.sample_type.as_ref()))
}

/// Interned frames shared by every profile of a document.
#[derive(Default)]
struct Frames {
    keys: Vec<FrameKey>,
    index: HashMap<FrameKey, usize>,
}

impl Frames {
    fn intern(&mut self, key: FrameKey) -> usize {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        self.keys.push(key.clone());
        self.index.insert(key, self.keys.len() - 1);
        self.keys.len() - 1
    }
}

/// One speedscope profile's stacks, weights and unit.
type SampledBody = (Vec<Vec<usize>>, Vec<i64>, &'static str);

/// speedscope's unit for a sample type's unit.
fn speedscope_unit(unit: &str) -> &'static str {
    match unit {
        "nanoseconds" => "nanoseconds",
        "microseconds" => "microseconds",
        "milliseconds" => "milliseconds",
        "seconds" => "seconds",
        "bytes" => "bytes",
        _ => "none",
    }
}

/// Writes `data` in speedscope's file format: one `sampled` profile per
/// process (named `executable [pid]`), stacks root first, weights in the
/// profile's own unit (sample counts are unit `none`), frames shared.
/// Only profiles of the first profile's sample type are written, as a
/// flamegraph of the same data would draw them.
pub fn write_speedscope(data: &ProfilesData, name: &str) -> Vec<u8> {
    let view = ProfileView::new(data);
    let wanted = first_type(&view);
    let mut frames = Frames::default();
    let mut profiles: Vec<Value> = Vec::new();
    let mut by_process: HashMap<String, usize> = HashMap::new();
    let mut bodies: Vec<SampledBody> = Vec::new();
    let mut scratch = Vec::new();
    for (resource, profile) in view.profiles() {
        let value_type = view.value_type(profile.sample_type.as_ref());
        if Some(&value_type) != wanted.as_ref() {
            continue;
        }
        let label = process_label(resource);
        let slot = *by_process.entry(label.clone()).or_insert_with(|| {
            profiles.push(json!({ "name": label }));
            bodies.push((Vec::new(), Vec::new(), speedscope_unit(&value_type.1)));
            bodies.len() - 1
        });
        let (samples, weights, _) = &mut bodies[slot];
        for sample in &profile.samples {
            let weight = sample_weight(sample);
            if weight <= 0 {
                continue;
            }
            scratch.clear();
            let locations: Vec<_> = view.stack(sample.stack_index).collect();
            for location in locations.into_iter().rev() {
                location_frames(&view, location, &mut scratch);
            }
            if scratch.is_empty() {
                continue;
            }
            samples.push(scratch.drain(..).map(|k| frames.intern(k)).collect());
            weights.push(weight);
        }
    }
    let profiles: Vec<Value> = profiles
        .into_iter()
        .zip(bodies)
        .map(|(mut head, (samples, weights, unit))| {
            let total: i64 = weights.iter().fold(0i64, |a, &w| a.saturating_add(w));
            head["type"] = json!("sampled");
            head["unit"] = json!(unit);
            head["startValue"] = json!(0);
            head["endValue"] = json!(total);
            head["samples"] = json!(samples);
            head["weights"] = json!(weights);
            head
        })
        .collect();
    let frames: Vec<Value> = frames
        .keys
        .into_iter()
        .map(|k| {
            let mut frame = json!({ "name": k.name });
            if !k.file.is_empty() {
                frame["file"] = json!(k.file);
                if k.line > 0 {
                    frame["line"] = json!(k.line);
                }
            }
            frame
        })
        .collect();
    let doc = json!({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "name": name,
        "exporter": concat!("smolder ", env!("CARGO_PKG_VERSION")),
        "activeProfileIndex": 0,
        "shared": { "frames": frames },
        "profiles": profiles,
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// Writes `data` as a Chrome `.cpuprofile` (`{nodes, startTime, endTime,
/// samples, timeDeltas}`, times in microseconds): one call tree under
/// `(root)` with a node per process (`executable [pid]`), and one sample
/// per observation (nanosecond values: one per timestamp, else per
/// period), one period apart, grouped by stack (a merged profile has no order in
/// time); at most [`MAX_CPUPROFILE_SAMPLES`] samples, each then standing for
/// several periods. The Firefox Profiler, Chrome DevTools and speedscope
/// open it.
pub fn write_chrome_cpuprofile(data: &ProfilesData) -> Vec<u8> {
    write_cpuprofile_capped(data, MAX_CPUPROFILE_SAMPLES)
}

/// The most samples a `.cpuprofile` written here holds (32 MiB of ids).
pub const MAX_CPUPROFILE_SAMPLES: u64 = 1 << 22;

fn write_cpuprofile_capped(data: &ProfilesData, max_samples: u64) -> Vec<u8> {
    let view = ProfileView::new(data);
    let wanted = first_type(&view);
    // Node 1 is (root); children by (parent, frame).
    let mut nodes: Vec<(FrameKey, Vec<usize>, i64)> = vec![(
        FrameKey {
            name: "(root)".into(),
            file: String::new(),
            line: 0,
        },
        Vec::new(),
        0,
    )];
    let mut child: HashMap<(usize, FrameKey), usize> = HashMap::new();
    let mut samples: Vec<(usize, i64, u64)> = Vec::new();
    let mut period_ns: i64 = 0;
    let mut start_ns: u64 = u64::MAX;
    let mut scratch = Vec::new();
    for (resource, profile) in view.profiles() {
        if Some(view.value_type(profile.sample_type.as_ref())) != wanted {
            continue;
        }
        if period_ns == 0 && profile.period > 0 {
            period_ns = profile.period;
        }
        if profile.time_unix_nano > 0 {
            start_ns = start_ns.min(profile.time_unix_nano);
        }
        for sample in &profile.samples {
            let weight = sample_weight(sample);
            if weight <= 0 {
                continue;
            }
            scratch.clear();
            scratch.push(FrameKey {
                name: process_label(resource),
                file: String::new(),
                line: 0,
            });
            let locations: Vec<_> = view.stack(sample.stack_index).collect();
            for location in locations.into_iter().rev() {
                location_frames(&view, location, &mut scratch);
            }
            let mut at = 0usize;
            for key in scratch.drain(..) {
                at = match child.get(&(at, key.clone())) {
                    Some(&n) => n,
                    None => {
                        nodes.push((key.clone(), Vec::new(), 0));
                        let n = nodes.len() - 1;
                        nodes[at].1.push(n);
                        child.insert((at, key), n);
                        n
                    }
                };
            }
            // Nanosecond values: a sample per timestamp, else per period.
            let observed = sample.timestamps_unix_nano.len() as u64;
            samples.push((at, weight, observed));
        }
    }
    // One sample per observation: a count is that many samples; nanosecond
    // values are a sample per timestamp, else per period (1 ms when
    // unknown), a period apart. Past
    // MAX_CPUPROFILE_SAMPLES in all, each sample stands for several periods
    // (the document's size never follows the counts of the input).
    let sample_ns = if period_ns > 0 { period_ns } else { 1_000_000 };
    let in_ns = wanted
        .as_ref()
        .is_some_and(|(_, unit)| unit == "nanoseconds");
    let periods = |weight: i64, observed: u64| -> u64 {
        let w = u64::try_from(weight).unwrap_or(0);
        match (in_ns, observed) {
            (false, _) => w,
            // Rounded, at least one: a period of the recording may differ
            // a little from the profile's (1 ms assumed when it has none).
            (true, 0) => (w.saturating_add(sample_ns as u64 / 2) / sample_ns as u64).max(1),
            (true, n) => n,
        }
    };
    let total: u64 = samples
        .iter()
        .map(|&(_, w, o)| periods(w, o))
        .fold(0, u64::saturating_add);
    let scale = total.div_ceil(max_samples).max(1);
    let delta_us =
        i64::try_from(((sample_ns / 1000).max(1) as u64).saturating_mul(scale)).unwrap_or(i64::MAX);
    let start_us = if start_ns == u64::MAX {
        0
    } else {
        (start_ns / 1000) as i64
    };
    let mut ids = Vec::new();
    for &(node, weight, observed) in &samples {
        let n = periods(weight, observed).div_ceil(scale);
        nodes[node].2 = nodes[node].2.saturating_add(n as i64);
        ids.extend(std::iter::repeat_n(node + 1, n as usize));
    }
    let deltas = vec![delta_us; ids.len()];
    let nodes: Vec<Value> = nodes
        .into_iter()
        .enumerate()
        .map(|(i, (key, children, hits))| {
            json!({
                "id": i + 1,
                "callFrame": {
                    "functionName": key.name,
                    "scriptId": "0",
                    "url": key.file,
                    "lineNumber": key.line - 1,
                    "columnNumber": -1,
                },
                "hitCount": hits,
                "children": children.into_iter().map(|c| c + 1).collect::<Vec<_>>(),
            })
        })
        .collect();
    let doc = json!({
        "nodes": nodes,
        "startTime": start_us,
        "endTime": start_us.saturating_add(delta_us.saturating_mul(ids.len() as i64)),
        "samples": ids,
        "timeDeltas": deltas,
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folded::read_folded;

    #[test]
    fn speedscope_stacks_are_root_first_with_weights() {
        let data = read_folded("main;work 3\nmain;idle 1\n").unwrap();
        let doc: Value = serde_json::from_slice(&write_speedscope(&data, "t")).unwrap();
        let frames: Vec<&str> = doc["shared"]["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(frames, ["main", "work", "idle"]);
        let p = &doc["profiles"][0];
        assert_eq!(p["samples"], json!([[0, 1], [0, 2]]));
        assert_eq!(p["weights"], json!([3, 1]));
        assert_eq!(p["endValue"], json!(4));
        assert_eq!(p["unit"], json!("none"));
    }

    #[test]
    fn cpuprofile_has_one_sample_per_observation() {
        let data = read_folded("main;work 3\nmain;idle 1\n").unwrap();
        let doc: Value = serde_json::from_slice(&write_chrome_cpuprofile(&data)).unwrap();
        let samples = doc["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 4);
        assert_eq!(doc["timeDeltas"].as_array().unwrap().len(), 4);
        let nodes = doc["nodes"].as_array().unwrap();
        let name = |id: &Value| {
            nodes.iter().find(|n| n["id"] == *id).unwrap()["callFrame"]["functionName"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(name(&samples[0]), "work");
        assert_eq!(name(&samples[3]), "idle");
        assert_eq!(nodes[0]["callFrame"]["functionName"], "(root)");
    }

    /// Leaf names of a `.cpuprofile`'s samples, counted.
    fn sample_leaves(doc: &Value) -> std::collections::BTreeMap<String, usize> {
        let nodes = doc["nodes"].as_array().unwrap();
        let mut out = std::collections::BTreeMap::new();
        for id in doc["samples"].as_array().unwrap() {
            let node = nodes.iter().find(|n| n["id"] == *id).unwrap();
            let name = node["callFrame"]["functionName"]
                .as_str()
                .unwrap()
                .to_owned();
            *out.entry(name).or_default() += 1;
        }
        out
    }

    #[test]
    fn cpuprofile_samples_are_periods_of_nanosecond_values() {
        // perf script text: values are nanoseconds, 1 ms a sample.
        let text = "prog 7/7 [000] 1.0: 1000000 cpu-clock: \n\t 1 work (/bin/prog)\n\n".repeat(3)
            + "prog 7/7 [000] 1.0: 1000000 cpu-clock: \n\t 1 idle (/bin/prog)\n\n";
        let data = crate::read_perf_script(text.as_bytes()).unwrap();
        let doc: Value = serde_json::from_slice(&write_chrome_cpuprofile(&data)).unwrap();
        let leaves = sample_leaves(&doc);
        assert_eq!(leaves["work"], 3, "{leaves:?}");
        assert_eq!(leaves["idle"], 1, "{leaves:?}");
    }

    #[test]
    fn cpuprofile_counts_past_the_cap_keep_their_shares_in_bounded_size() {
        // Counts that would be 10^15 samples: bounded, shares kept.
        let data = read_folded("main;work 750000000000000\nmain;idle 250000000000000\n").unwrap();
        let doc: Value = serde_json::from_slice(&write_cpuprofile_capped(&data, 1000)).unwrap();
        let leaves = sample_leaves(&doc);
        assert_eq!(leaves["work"] + leaves["idle"], 1000, "{leaves:?}");
        assert_eq!(leaves["work"], 750, "{leaves:?}");
        let deltas = doc["timeDeltas"].as_array().unwrap();
        assert_eq!(deltas.len(), 1000);
        assert_eq!(deltas[0].as_i64().unwrap(), 1000 * 1_000_000_000_000);
    }
}
