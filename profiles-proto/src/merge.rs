//! `merge`: several profiles into one, re-interned into a single dictionary
//! (resources with equal attributes become one, identical samples merge).

use crate::builder::{
    LocationSpec, MappingSpec, ProfileBuilder, ProfileConfig, ProfileTypeId, SourceLine,
    BUILD_ID_KEY,
};
use crate::otlp::profiles::v1development::{Location, ProfilesData, Sample};
use crate::otlp::resource::v1::Resource;
use crate::pprof::any_value_to_string;
use crate::view::{sample_weight, ProfileView};

/// Re-reads a location of `view` as the builder's input type.
pub fn location_spec(view: &ProfileView<'_>, location: &Location) -> LocationSpec {
    let dict = view.dictionary();
    let mapping = usize::try_from(location.mapping_index)
        .ok()
        .filter(|&i| i > 0)
        .and_then(|i| dict.mapping_table.get(i))
        .map(|m| MappingSpec {
            memory_start: m.memory_start,
            memory_limit: m.memory_limit,
            file_offset: m.file_offset,
            filename: view.string(m.filename_strindex).to_owned(),
            build_id: view
                .attribute(&m.attribute_indices, BUILD_ID_KEY)
                .map(any_value_to_string),
        });
    let lines = location
        .lines
        .iter()
        .map(|line| {
            let f = usize::try_from(line.function_index)
                .ok()
                .and_then(|i| dict.function_table.get(i))
                .copied()
                .unwrap_or_default();
            SourceLine {
                function: view.string(f.name_strindex).to_owned(),
                system_name: view.string(f.system_name_strindex).to_owned(),
                file: view.string(f.filename_strindex).to_owned(),
                line: line.line,
                column: line.column,
            }
        })
        .collect();
    LocationSpec {
        mapping,
        address: location.address,
        lines,
        frame_type: view.frame_type(location),
    }
}

/// Merges `inputs` into one `ProfilesData`. Profiles of the same sample
/// type, period type and period share a profile type; the time range
/// becomes the union of the inputs' ranges.
pub fn merge<'a>(inputs: impl IntoIterator<Item = &'a ProfilesData>) -> ProfilesData {
    let mut merger = Merger::default();
    for data in inputs {
        merger.add(data);
    }
    merger.finish()
}

/// A merge fed one profile at a time, so that merging many profiles (the
/// agent's intervals of a day) holds only the merged result and the profile
/// being added, never all the inputs.
///
/// ```
/// use smolder_profiles_proto::{read_folded, write_folded, FoldOptions, Merger};
///
/// let mut merger = Merger::without_timestamps();
/// for text in ["main;f 2\n", "main;f 3\nmain;g 1\n"] {
///     merger.add(&read_folded(text).unwrap()); // each input can be dropped here
/// }
/// let merged = merger.finish();
/// assert_eq!(write_folded(&merged, &FoldOptions::default()), "main;f 5\nmain;g 1\n");
/// ```
#[derive(Default)]
pub struct Merger {
    builder: Option<ProfileBuilder>,
    types: Vec<(ProfileConfig, ProfileTypeId)>,
    drop_timestamps: bool,
    coarse: bool,
    samples: i64,
}

/// Resource and sample attributes that name one process, thread or CPU
/// rather than what ran: a coarse merge drops them.
pub const INSTANCE_ATTRIBUTES: &[&str] = &[
    "process.pid",
    "process.command_line",
    "thread.id",
    "cpu.logical_number",
];

impl Merger {
    /// A merge that keeps every sample's timestamps.
    pub fn new() -> Merger {
        Merger::default()
    }

    /// A merge that sums the values of identical samples instead of keeping
    /// one timestamp per observation: what a long range needs to stay
    /// bounded by its distinct stacks rather than by its sample count.
    pub fn without_timestamps() -> Merger {
        Merger {
            drop_timestamps: true,
            ..Merger::default()
        }
    }

    /// A merge by what ran rather than where: no timestamps, no addresses
    /// (locations keep their functions, lines and the mapped file's name and
    /// build-id), no trace links, and none of the [`INSTANCE_ATTRIBUTES`]
    /// (PIDs, command lines, thread ids, CPUs). Its size is bounded by the distinct code
    /// paths of the programs seen, whatever the number of processes that
    /// ran them: what a day of a churning host needs.
    pub fn coarse() -> Merger {
        Merger {
            drop_timestamps: true,
            coarse: true,
            ..Merger::default()
        }
    }

    /// Adds every sample of `data`.
    pub fn add(&mut self, data: &ProfilesData) {
        self.add_selected(data, |_, _, _| true);
    }

    /// Adds the samples of `data` that `keep` accepts (given the view of
    /// `data`, the sample's resource and the sample).
    pub fn add_selected(
        &mut self,
        data: &ProfilesData,
        mut keep: impl FnMut(&ProfileView<'_>, Option<&Resource>, &Sample) -> bool,
    ) {
        let view = ProfileView::new(data);
        for (resource, profile) in view.profiles() {
            let (sample_type, period_type) = (
                view.value_type(profile.sample_type.as_ref()),
                view.value_type(profile.period_type.as_ref()),
            );
            let config = ProfileConfig {
                sample_type,
                period_type,
                period: profile.period,
                time_unix_nano: profile.time_unix_nano,
                duration_nano: profile.duration_nano,
            };
            let b = self
                .builder
                .get_or_insert_with(|| ProfileBuilder::new(config.clone()));
            let same_kind = |c: &ProfileConfig| {
                c.sample_type == config.sample_type
                    && c.period_type == config.period_type
                    && c.period == config.period
            };
            let type_id = match self.types.iter().position(|(c, _)| same_kind(c)) {
                Some(i) => {
                    let id = self.types[i].1;
                    let merged = b.profile_config_mut(id);
                    widen(merged, &config);
                    self.types[i].0 = merged.clone();
                    id
                }
                None if self.types.is_empty() => {
                    self.types.push((config, b.default_profile_type()));
                    self.types[0].1
                }
                None => {
                    let id = b.add_profile_type(config.clone());
                    self.types.push((config, id));
                    id
                }
            };
            let mut resource_id = None;
            for sample in &profile.samples {
                if !keep(&view, resource, sample) {
                    continue;
                }
                let coarse = self.coarse;
                let resource_id = *resource_id.get_or_insert_with(|| {
                    let mut attributes = resource.map(|r| r.attributes.clone()).unwrap_or_default();
                    if coarse {
                        attributes.retain(|kv| !INSTANCE_ATTRIBUTES.contains(&kv.key.as_str()));
                    }
                    b.resource(attributes)
                });
                let stack: Vec<i32> = view
                    .stack(sample.stack_index)
                    .map(|l| {
                        let mut spec = location_spec(&view, l);
                        if coarse {
                            spec.address = 0;
                            if let Some(m) = spec.mapping.as_mut() {
                                (m.memory_start, m.memory_limit, m.file_offset) = (0, 0, 0);
                            }
                        }
                        b.location(&spec)
                    })
                    .collect();
                let stack = b.stack(&stack);
                let attrs: Vec<i32> = sample
                    .attribute_indices
                    .iter()
                    .filter_map(|&i| {
                        view.dictionary()
                            .attribute_table
                            .get(usize::try_from(i).ok()?)
                    })
                    .filter(|kv| kv.value.is_some())
                    .filter(|kv| {
                        !coarse || !INSTANCE_ATTRIBUTES.contains(&view.string(kv.key_strindex))
                    })
                    .map(|kv| {
                        b.attribute(
                            view.string(kv.key_strindex),
                            kv.value.clone().unwrap_or_default(),
                            view.string(kv.unit_strindex),
                        )
                    })
                    .collect();
                // A trace link names one request: a coarse merge drops it.
                let link = match sample.link_index {
                    0 => 0,
                    _ if coarse => 0,
                    _ => crate::links::sample_link(&view, sample)
                        .map_or(0, |l| b.link(l.trace_id, l.span_id)),
                };
                self.samples = self.samples.saturating_add(sample_weight(sample));
                if sample.timestamps_unix_nano.is_empty() || self.drop_timestamps {
                    let weight = sample_weight(sample);
                    b.add_linked_sample(resource_id, type_id, stack, &attrs, link, weight, None);
                } else {
                    for (i, &ts) in sample.timestamps_unix_nano.iter().enumerate() {
                        let value = sample.values.get(i).copied().unwrap_or(1);
                        b.add_linked_sample(
                            resource_id,
                            type_id,
                            stack,
                            &attrs,
                            link,
                            value,
                            Some(ts),
                        );
                    }
                }
            }
        }
    }

    /// The total weight of the samples added so far (`sample_weight`).
    pub fn total(&self) -> i64 {
        self.samples
    }

    /// Distinct samples held so far: what the merge's memory grows with.
    pub fn distinct_samples(&self) -> usize {
        self.builder
            .as_ref()
            .map_or(0, ProfileBuilder::sample_count)
    }

    pub fn finish(self) -> ProfilesData {
        match self.builder {
            Some(b) => b.finish(),
            None => ProfilesData::default(),
        }
    }
}

/// Extends `into`'s time range to cover `other`'s.
fn widen(into: &mut ProfileConfig, other: &ProfileConfig) {
    if other.time_unix_nano == 0 {
        return;
    }
    let end =
        (into.time_unix_nano + into.duration_nano).max(other.time_unix_nano + other.duration_nano);
    if into.time_unix_nano == 0 || other.time_unix_nano < into.time_unix_nano {
        into.time_unix_nano = other.time_unix_nano;
    }
    into.duration_nano = end - into.time_unix_nano;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folded::{read_folded, write_folded, FoldOptions};

    #[test]
    fn merging_sums_identical_stacks() {
        let a = read_folded("main;f 2\nmain;g 1\n").unwrap();
        let b = read_folded("main;f 3\nmain;h 4\n").unwrap();
        let merged = merge([&a, &b]);
        crate::validate::validate(&merged).unwrap();
        assert_eq!(
            write_folded(&merged, &FoldOptions::default()),
            "main;f 5\nmain;g 1\nmain;h 4\n"
        );
    }

    #[test]
    fn a_coarse_merge_keeps_what_ran_not_where() {
        use crate::builder::{
            LocationSpec, MappingSpec, ProfileBuilder, ProfileConfig, SourceLine,
        };
        use crate::otlp::common::v1::{any_value::Value, AnyValue, KeyValue};
        let string = |s: &str| AnyValue {
            value: Some(Value::StringValue(s.to_owned())),
        };
        let int = |i: i64| AnyValue {
            value: Some(Value::IntValue(i)),
        };
        // Two processes of one program, loaded at different addresses.
        let process = |pid: i64, base: u64| {
            let mut b = ProfileBuilder::new(ProfileConfig::cpu(99, 0, 0));
            let kv = |k: &str, v| KeyValue {
                key: k.to_owned(),
                value: Some(v),
                ..KeyValue::default()
            };
            let r = b.resource(vec![
                kv("process.pid", int(pid)),
                kv("process.executable.name", string("app")),
            ]);
            let loc = b.location(&LocationSpec {
                mapping: Some(MappingSpec {
                    memory_start: base,
                    memory_limit: base + 0x1000,
                    file_offset: 0,
                    filename: "/usr/bin/app".to_owned(),
                    build_id: None,
                }),
                address: base + 0x10,
                lines: vec![SourceLine {
                    function: "work".to_owned(),
                    ..SourceLine::default()
                }],
                ..LocationSpec::default()
            });
            let stack = b.stack(&[loc]);
            let tid = b.attribute("thread.id", int(pid), "");
            let name = b.attribute("thread.name", string("worker"), "");
            let t = b.default_profile_type();
            b.add_sample(r, t, stack, &[tid, name], 3, Some(5));
            b.finish()
        };
        let (a, b) = (process(10, 0x1000), process(11, 0x8000));
        let mut fine = Merger::without_timestamps();
        let mut coarse = Merger::coarse();
        for data in [&a, &b] {
            fine.add(data);
            coarse.add(data);
        }
        assert_eq!(fine.distinct_samples(), 2);
        assert_eq!(coarse.distinct_samples(), 1);
        assert_eq!(coarse.total(), 6);
        let merged = coarse.finish();
        crate::validate::validate(&merged).unwrap();
        let view = ProfileView::new(&merged);
        let (resource, profile) = view.profiles().next().unwrap();
        let keys: Vec<&str> = resource
            .unwrap()
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .collect();
        assert_eq!(keys, ["process.executable.name"]);
        let sample = &profile.samples[0];
        assert_eq!(sample_weight(sample), 6);
        let names: Vec<&str> = sample
            .attribute_indices
            .iter()
            .map(|&i| view.string(view.dictionary().attribute_table[i as usize].key_strindex))
            .collect();
        assert_eq!(names, ["thread.name"]);
        let location = view.stack(sample.stack_index).next().unwrap();
        assert_eq!(location.address, 0);
        assert_eq!(location_spec(&view, location).lines[0].function, "work");
    }

    #[test]
    fn merging_one_profile_keeps_it() {
        let a = read_folded("main;f_[i] 2\nmain;k_[k] 1\n").unwrap();
        assert_eq!(merge([&a]), a);
    }
}
