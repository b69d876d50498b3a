//! `merge`: several profiles into one, re-interned into a single dictionary
//! (resources with equal attributes become one, identical samples merge).

use std::collections::HashSet;

use crate::builder::{
    LocationSpec, MappingSpec, ProfileBuilder, ProfileConfig, ProfileTypeId, ResourceId,
    SourceLine, BUILD_ID_KEY,
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
///
/// With [`Merger::limiting_stacks`], the merge holds a bounded number of
/// distinct samples whatever its inputs: the lightest are summed into one
/// [`OTHER_STACKS`] sample per resource and profile type, so the totals stay
/// exact.
///
/// ```
/// use smolder_profiles_proto::{read_folded, write_folded, FoldOptions, Merger};
///
/// let mut merger = Merger::without_timestamps().limiting_stacks(4);
/// merger.add(&read_folded("main;hot 50\nmain;warm 20\nmain;a 1\nmain;b 1\nmain;c 2\n").unwrap());
/// // Over 4: the lightest are folded until 2 are left.
/// assert_eq!(merger.folded().stacks, 3);
/// assert_eq!(merger.total(), 74);
/// let text = write_folded(&merger.finish(), &FoldOptions::default());
/// assert_eq!(text, "main;hot 50\nmain;warm 20\n[other stacks] 4\n");
/// ```
#[derive(Default)]
pub struct Merger {
    builder: Option<ProfileBuilder>,
    types: Vec<(ProfileConfig, ProfileTypeId)>,
    drop_timestamps: bool,
    coarse: bool,
    samples: i64,
    /// At most this many distinct samples besides the folded ones.
    max_stacks: Option<usize>,
    /// The stack of the [`OTHER_STACKS`] frame, once interned.
    other_stack: Option<i32>,
    /// The resources and types that have a sample of folded stacks.
    others: HashSet<(ResourceId, ProfileTypeId)>,
    folded: Folded,
}

/// The one frame that stands for the stacks a bounded merge folded
/// ([`Merger::limiting_stacks`]).
pub const OTHER_STACKS: &str = "[other stacks]";

/// What a bounded merge folded into [`OTHER_STACKS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    /// Distinct samples folded. A stack folded, seen again later and
    /// folded again counts twice.
    pub stacks: u64,
    /// Their total weight ([`sample_weight`]).
    pub samples: i64,
}

/// What becomes of a sample being added.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Skip,
    Keep,
    Fold,
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

    /// Holds at most `max` distinct samples (stack, sample attributes and
    /// link), besides one [`OTHER_STACKS`] sample per resource and profile
    /// type. When an added profile takes the merge over `max`, its lightest
    /// samples are summed into their resource's `OTHER_STACKS` sample until
    /// `max / 2` are left (and the dictionary is rebuilt without what they
    /// alone used), so the heaviest stacks stay and every total stays
    /// exact. A kept stack's weight counts from when it was last kept: what
    /// it weighed before it was folded is in `OTHER_STACKS`. Between two
    /// such foldings the merge may exceed `max` by the distinct samples of
    /// one profile of one resource being added.
    pub fn limiting_stacks(mut self, max: usize) -> Merger {
        self.max_stacks = Some(max.max(1));
        self
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
        self.add_with(data, false, |view, resource, sample| {
            if keep(view, resource, sample) {
                Fate::Keep
            } else {
                Fate::Skip
            }
        });
    }

    /// `rebuilding`: `data` is this merge's own result being re-added, so
    /// its weight is counted already and nothing is folded but what `fate`
    /// says.
    fn add_with(
        &mut self,
        data: &ProfilesData,
        rebuilding: bool,
        mut fate: impl FnMut(&ProfileView<'_>, Option<&Resource>, &Sample) -> Fate,
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
                let fate = fate(&view, resource, sample);
                if fate == Fate::Skip {
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
                let weight = sample_weight(sample);
                if !rebuilding {
                    self.samples = self.samples.saturating_add(weight);
                }
                if fate == Fate::Fold {
                    let stack = *self.other_stack.get_or_insert_with(|| {
                        let other = b.location(&LocationSpec {
                            lines: vec![SourceLine::function(OTHER_STACKS)],
                            ..LocationSpec::default()
                        });
                        b.stack(&[other])
                    });
                    self.others.insert((resource_id, type_id));
                    b.add_sample(resource_id, type_id, stack, &[], weight, None);
                    continue;
                }
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
                if sample.timestamps_unix_nano.is_empty() || self.drop_timestamps {
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
            if !rebuilding {
                self.fold_if_full();
            }
        }
    }

    /// Folds the lightest samples when the merge holds more than its limit.
    fn fold_if_full(&mut self) {
        let (Some(max), Some(b)) = (self.max_stacks, self.builder.as_ref()) else {
            return;
        };
        if b.sample_count() <= max.saturating_add(self.others.len()) {
            return;
        }
        let Some(b) = self.builder.take() else { return };
        let old = b.finish();
        let old_other = self.other_stack.take();
        self.others.clear();
        // The weight of the `keep`-th heaviest sample, and how many of
        // that weight may stay (the first met, in the order re-added below).
        let keep = max / 2;
        let mut weights: Vec<i64> = ProfileView::new(&old)
            .profiles()
            .flat_map(|(_, p)| &p.samples)
            .filter(|s| Some(s.stack_index) != old_other)
            .map(sample_weight)
            .collect();
        let (threshold, mut ties) = if keep == 0 || weights.is_empty() {
            (i64::MAX, 0)
        } else if keep >= weights.len() {
            (i64::MIN, 0)
        } else {
            let (_, &mut t, _) = weights.select_nth_unstable_by(keep - 1, |a, b| b.cmp(a));
            let heavier = weights.iter().filter(|&&w| w > t).count();
            (t, keep - heavier)
        };
        drop(weights);
        let mut b = ProfileBuilder::new(self.types[0].0.clone());
        for (config, _) in &self.types[1..] {
            b.add_profile_type(config.clone());
        }
        self.builder = Some(b);
        let mut folded = Folded::default();
        self.add_with(&old, true, |_, _, sample| {
            let weight = sample_weight(sample);
            if Some(sample.stack_index) == old_other {
                return Fate::Fold;
            }
            if weight > threshold || (weight == threshold && ties > 0) {
                if weight == threshold {
                    ties -= 1;
                }
                return Fate::Keep;
            }
            folded.stacks += 1;
            folded.samples = folded.samples.saturating_add(weight);
            Fate::Fold
        });
        self.folded.stacks += folded.stacks;
        self.folded.samples = self.folded.samples.saturating_add(folded.samples);
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

    /// What was folded into [`OTHER_STACKS`] so far.
    pub fn folded(&self) -> Folded {
        self.folded
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
    fn a_bounded_merge_folds_the_lightest_stacks_into_other_stacks_per_program() {
        use crate::builder::{key_value, string_value, ProfileBuilder, ProfileConfig, SourceLine};
        // Two programs; in every input each runs its hot stack 20 times and
        // 30 stacks seen once and never again (a day's long tail).
        let input = |n: usize| {
            let mut b = ProfileBuilder::new(ProfileConfig::cpu(19, 0, 0));
            let t = b.default_profile_type();
            for program in ["app", "db"] {
                let r = b.resource(vec![key_value(
                    "process.executable.name",
                    string_value(program),
                )]);
                let add = |b: &mut ProfileBuilder, leaf: String, weight| {
                    let main = b.location(&LocationSpec {
                        lines: vec![SourceLine::function(format!("{program}_main"))],
                        ..LocationSpec::default()
                    });
                    let leaf = b.location(&LocationSpec {
                        lines: vec![SourceLine::function(leaf)],
                        ..LocationSpec::default()
                    });
                    let stack = b.stack(&[leaf, main]);
                    b.add_sample(r, t, stack, &[], weight, None);
                };
                add(&mut b, format!("{program}_hot"), 20);
                for i in 0..30 {
                    add(&mut b, format!("{program}_tail_{n}_{i}"), 1);
                }
            }
            b.finish()
        };
        let max = 16;
        let mut merger = Merger::coarse().limiting_stacks(max);
        let mut most = 0;
        for n in 0..50 {
            merger.add(&input(n));
            most = most.max(merger.distinct_samples());
        }
        // Bounded: the limit, one folded sample per program, and at most
        // one program's profile of one input (31 samples) between foldings.
        assert!(most <= max + 2 + 31, "{most} distinct samples");
        let folded = merger.folded();
        assert_eq!(merger.total(), 50 * 2 * 50);
        let merged = merger.finish();
        crate::validate::validate(&merged).unwrap();
        let view = ProfileView::new(&merged);
        let mut by_program = std::collections::BTreeMap::new();
        let mut others = 0;
        for (resource, profile) in view.profiles() {
            let program = resource.unwrap().attributes[0].value.clone();
            let program = any_value_to_string(&program.unwrap());
            for sample in &profile.samples {
                *by_program.entry(program.clone()).or_insert(0) += sample_weight(sample);
                let names: Vec<String> = view
                    .stack(sample.stack_index)
                    .map(|l| location_spec(&view, l).lines[0].function.clone())
                    .collect();
                if names == [OTHER_STACKS] {
                    others += 1;
                    continue;
                }
                assert!(names[1].starts_with(&program), "{names:?} under {program}");
            }
        }
        // Totals exact per program; one folded sample each.
        assert_eq!(by_program.get("app"), Some(&2500));
        assert_eq!(by_program.get("db"), Some(&2500));
        assert_eq!(others, 2);
        // The hot stacks were never folded: all their weight is theirs.
        let text = write_folded(&merged, &FoldOptions::default());
        assert!(text.contains("app_main;app_hot 1000\n"), "{text}");
        assert!(text.contains("db_main;db_hot 1000\n"), "{text}");
        // What was folded is counted: everything but the hot stacks and
        // what is still held of the tail.
        let other: i64 = text
            .lines()
            .filter(|l| l.starts_with(OTHER_STACKS))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
            .sum();
        assert_eq!(folded.samples, other);
        let tail_held = text.lines().filter(|l| l.contains("_tail_")).count() as u64;
        assert_eq!(folded.stacks + tail_held, 50 * 2 * 30);
        assert!(folded.stacks > 0 && tail_held <= max as u64);
    }

    #[test]
    fn merging_one_profile_keeps_it() {
        let a = read_folded("main;f_[i] 2\nmain;k_[k] 1\n").unwrap();
        assert_eq!(merge([&a]), a);
    }
}
