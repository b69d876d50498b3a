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
    samples: i64,
}

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
                let resource_id = *resource_id.get_or_insert_with(|| {
                    b.resource(resource.map(|r| r.attributes.clone()).unwrap_or_default())
                });
                let stack: Vec<i32> = view
                    .stack(sample.stack_index)
                    .map(|l| b.location(&location_spec(&view, l)))
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
                    .map(|kv| {
                        b.attribute(
                            view.string(kv.key_strindex),
                            kv.value.clone().unwrap_or_default(),
                            view.string(kv.unit_strindex),
                        )
                    })
                    .collect();
                let link = match sample.link_index {
                    0 => 0,
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
    fn merging_one_profile_keeps_it() {
        let a = read_folded("main;f_[i] 2\nmain;k_[k] 1\n").unwrap();
        assert_eq!(merge([&a]), a);
    }
}
