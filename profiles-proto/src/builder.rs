//! The interning `ProfileBuilder`: owns one `ProfilesDictionary` under
//! construction and the samples grouped by resource and profile type.
//! Everything that produces a `ProfilesData` (sampler, readers) goes through it.

use std::collections::HashMap;
use std::hash::Hash;

use prost::Message;

use crate::otlp::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use crate::otlp::profiles::v1development::{
    Function, KeyValueAndUnit, Line, Link, Location, Mapping, Profile, ProfilesData,
    ProfilesDictionary, ResourceProfiles, Sample, ScopeProfiles, Stack, ValueType,
};
use crate::otlp::resource::v1::Resource;

/// Attribute key of a location's frame type (OpenTelemetry semantic conventions).
pub const FRAME_TYPE_KEY: &str = "profile.frame.type";
/// Attribute key of a mapping's GNU build-id (hex).
pub const BUILD_ID_KEY: &str = "process.executable.build_id.gnu";

/// What produced a frame, as the `profile.frame.type` attribute names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameType {
    #[default]
    Native,
    Kernel,
    Rust,
    Go,
    CPython,
    Jvm,
    V8Js,
    Php,
    Ruby,
    Perl,
    DotNet,
    Beam,
}

impl FrameType {
    /// The semantic-convention value of `profile.frame.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameType::Native => "native",
            FrameType::Kernel => "kernel",
            FrameType::Rust => "rust",
            FrameType::Go => "go",
            FrameType::CPython => "cpython",
            FrameType::Jvm => "jvm",
            FrameType::V8Js => "v8js",
            FrameType::Php => "php",
            FrameType::Ruby => "ruby",
            FrameType::Perl => "perl",
            FrameType::DotNet => "dotnet",
            FrameType::Beam => "beam",
        }
    }

    /// Parses a `profile.frame.type` value; unknown values are `None`.
    pub fn parse(s: &str) -> Option<FrameType> {
        Some(match s {
            "native" => FrameType::Native,
            "kernel" => FrameType::Kernel,
            "rust" => FrameType::Rust,
            "go" => FrameType::Go,
            "cpython" => FrameType::CPython,
            "jvm" => FrameType::Jvm,
            "v8js" => FrameType::V8Js,
            "php" => FrameType::Php,
            "ruby" => FrameType::Ruby,
            "perl" => FrameType::Perl,
            "dotnet" => FrameType::DotNet,
            "beam" => FrameType::Beam,
            _ => return None,
        })
    }
}

/// One source line of a location: a function, and where in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceLine {
    pub function: String,
    /// Mangled or system name; empty when unknown.
    pub system_name: String,
    pub file: String,
    /// 0 when unknown.
    pub line: i64,
    /// 0 when unknown.
    pub column: i64,
}

impl SourceLine {
    /// A line that knows only its function name.
    pub fn function(name: impl Into<String>) -> SourceLine {
        SourceLine {
            function: name.into(),
            ..SourceLine::default()
        }
    }
}

/// A binary mapped into a process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MappingSpec {
    pub memory_start: u64,
    pub memory_limit: u64,
    pub file_offset: u64,
    pub filename: String,
    /// GNU build-id, lower-case hex.
    pub build_id: Option<String>,
}

/// A frame: an address and its source lines, innermost inlined function
/// first and the function it was inlined into last.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LocationSpec {
    pub mapping: Option<MappingSpec>,
    pub address: u64,
    pub lines: Vec<SourceLine>,
    pub frame_type: FrameType,
}

/// Sample type, period and time range of the profiles one builder makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileConfig {
    pub sample_type: (String, String),
    pub period_type: (String, String),
    pub period: i64,
    pub time_unix_nano: u64,
    pub duration_nano: u64,
}

impl ProfileConfig {
    /// The on-CPU convention of the OpenTelemetry eBPF profiler:
    /// `samples`/`count` sampled every 1e9/`hz` nanoseconds of `cpu`.
    pub fn cpu(hz: u64, time_unix_nano: u64, duration_nano: u64) -> ProfileConfig {
        ProfileConfig {
            sample_type: ("samples".into(), "count".into()),
            period_type: ("cpu".into(), "nanoseconds".into()),
            period: (1_000_000_000 / hz.max(1)) as i64,
            time_unix_nano,
            duration_nano,
        }
    }

    /// Off-CPU time: each sample's values are the nanoseconds a thread
    /// spent blocked (off the CPU) with that stack, from the sample's
    /// timestamp on. The period is one nanosecond of off-CPU time.
    pub fn off_cpu(time_unix_nano: u64, duration_nano: u64) -> ProfileConfig {
        ProfileConfig {
            sample_type: ("off_cpu".into(), "nanoseconds".into()),
            period_type: ("off_cpu".into(), "nanoseconds".into()),
            period: 1,
            time_unix_nano,
            duration_nano,
        }
    }
}

/// A resource's position in the builder, returned by [`ProfileBuilder::resource`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResourceId(usize);

/// A profile type's position in the builder (0 is the one given to `new`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProfileTypeId(usize);

/// Interns values of `T` into a table whose index 0 is the zero value.
struct Table<K, T> {
    rows: Vec<T>,
    index: HashMap<K, i32>,
}

impl<K: Hash + Eq, T: Default> Table<K, T> {
    fn new() -> Self {
        Table {
            rows: vec![T::default()],
            index: HashMap::new(),
        }
    }

    fn intern(&mut self, key: K, make: impl FnOnce() -> T) -> i32 {
        let next = self.rows.len() as i32;
        *self.index.entry(key).or_insert_with(|| {
            self.rows.push(make());
            next
        })
    }
}

#[derive(Default)]
struct Observations {
    /// Sum of the values given without a timestamp.
    untimed: Option<i64>,
    values: Vec<i64>,
    timestamps: Vec<u64>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct SampleKey {
    stack: i32,
    attributes: Vec<i32>,
    link: i32,
}

struct ProfileUnderConstruction {
    samples: Vec<(SampleKey, Observations)>,
    index: HashMap<SampleKey, usize>,
}

struct ResourceEntry {
    attributes: Vec<KeyValue>,
    profiles: Vec<Option<ProfileUnderConstruction>>,
}

/// Builds one `ProfilesData` with a single interned `ProfilesDictionary`.
///
/// Index 0 of every table is the zero value; strings, functions, mappings,
/// locations, stacks and attributes are stored once. Samples are grouped
/// into one `ResourceProfiles` per resource, and samples with the same stack,
/// attributes and link are merged into one `Sample`.
pub struct ProfileBuilder {
    strings: Table<String, String>,
    functions: Table<(i32, i32, i32, i64), Function>,
    mappings: Table<MappingSpec, Mapping>,
    locations: Table<LocationSpec, Location>,
    stacks: Table<Vec<i32>, Stack>,
    attributes: Table<(i32, i32, Vec<u8>), KeyValueAndUnit>,
    links: Table<([u8; 16], [u8; 8]), Link>,
    profile_types: Vec<ProfileConfig>,
    resources: Vec<ResourceEntry>,
    resource_index: HashMap<Vec<u8>, usize>,
    scope: InstrumentationScope,
    /// Distinct samples of all resources and types.
    distinct_samples: usize,
}

impl ProfileBuilder {
    pub fn new(config: ProfileConfig) -> ProfileBuilder {
        let mut strings = Table::new();
        strings.rows[0] = String::new();
        strings.index.insert(String::new(), 0);
        ProfileBuilder {
            strings,
            functions: Table::new(),
            mappings: Table::new(),
            locations: Table::new(),
            stacks: Table::new(),
            attributes: Table::new(),
            links: Table::new(),
            profile_types: vec![config],
            resources: Vec::new(),
            resource_index: HashMap::new(),
            scope: InstrumentationScope {
                name: "smolder".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..InstrumentationScope::default()
            },
            distinct_samples: 0,
        }
    }

    /// Adds another profile type (e.g. a second pprof sample type); every
    /// resource gets one `Profile` per type that has samples.
    pub fn add_profile_type(&mut self, config: ProfileConfig) -> ProfileTypeId {
        self.profile_types.push(config);
        ProfileTypeId(self.profile_types.len() - 1)
    }

    /// The first profile type, the one given to [`ProfileBuilder::new`].
    pub fn default_profile_type(&self) -> ProfileTypeId {
        ProfileTypeId(0)
    }

    pub fn profile_config_mut(&mut self, id: ProfileTypeId) -> &mut ProfileConfig {
        &mut self.profile_types[id.0]
    }

    pub fn set_scope(&mut self, scope: InstrumentationScope) {
        self.scope = scope;
    }

    pub fn string(&mut self, s: &str) -> i32 {
        if let Some(&i) = self.strings.index.get(s) {
            return i;
        }
        self.strings.intern(s.to_owned(), || s.to_owned())
    }

    pub fn function(&mut self, name: &str, system_name: &str, file: &str, start_line: i64) -> i32 {
        let key = (
            self.string(name),
            self.string(system_name),
            self.string(file),
            start_line,
        );
        self.functions.intern(key, || Function {
            name_strindex: key.0,
            system_name_strindex: key.1,
            filename_strindex: key.2,
            start_line,
        })
    }

    /// Interns a key/value attribute (with an optional unit).
    pub fn attribute(&mut self, key: &str, value: AnyValue, unit: &str) -> i32 {
        let key_strindex = self.string(key);
        let unit_strindex = self.string(unit);
        let encoded = value.encode_to_vec();
        self.attributes
            .intern((key_strindex, unit_strindex, encoded), || KeyValueAndUnit {
                key_strindex,
                value: Some(value),
                unit_strindex,
            })
    }

    pub fn mapping(&mut self, spec: &MappingSpec) -> i32 {
        if let Some(&i) = self.mappings.index.get(spec) {
            return i;
        }
        let filename_strindex = self.string(&spec.filename);
        let attribute_indices = match &spec.build_id {
            Some(id) => vec![self.attribute(BUILD_ID_KEY, string_value(id), "")],
            None => Vec::new(),
        };
        self.mappings.intern(spec.clone(), || Mapping {
            memory_start: spec.memory_start,
            memory_limit: spec.memory_limit,
            file_offset: spec.file_offset,
            filename_strindex,
            attribute_indices,
        })
    }

    pub fn location(&mut self, spec: &LocationSpec) -> i32 {
        if let Some(&i) = self.locations.index.get(spec) {
            return i;
        }
        let mapping_index = spec.mapping.as_ref().map_or(0, |m| self.mapping(m));
        let lines = spec
            .lines
            .iter()
            .map(|l| Line {
                function_index: self.function(&l.function, &l.system_name, &l.file, 0),
                line: l.line,
                column: l.column,
            })
            .collect();
        let frame_type = self.attribute(FRAME_TYPE_KEY, string_value(spec.frame_type.as_str()), "");
        self.locations.intern(spec.clone(), || Location {
            mapping_index,
            address: spec.address,
            lines,
            attribute_indices: vec![frame_type],
        })
    }

    /// Interns a stack of location indices, leaf first.
    pub fn stack(&mut self, location_indices: &[i32]) -> i32 {
        if let Some(&i) = self.stacks.index.get(location_indices) {
            return i;
        }
        self.stacks.intern(location_indices.to_vec(), || Stack {
            location_indices: location_indices.to_vec(),
        })
    }

    /// Interns a trace link (the span a sample was taken in): a 16-byte
    /// trace id and an 8-byte span id, as `link_table` carries them.
    pub fn link(&mut self, trace_id: [u8; 16], span_id: [u8; 8]) -> i32 {
        self.links.intern((trace_id, span_id), || Link {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
        })
    }

    /// The resource with these attributes (one per process), created on first use.
    pub fn resource(&mut self, attributes: Vec<KeyValue>) -> ResourceId {
        let key = Resource {
            attributes: attributes.clone(),
            ..Resource::default()
        }
        .encode_to_vec();
        let next = self.resources.len();
        let index = *self.resource_index.entry(key).or_insert(next);
        if index == next {
            self.resources.push(ResourceEntry {
                attributes,
                profiles: Vec::new(),
            });
        }
        ResourceId(index)
    }

    /// Records one observation of `value` on `stack` with sample attributes
    /// `attributes` (indices from [`ProfileBuilder::attribute`]), at `timestamp`
    /// when known. Observations with the same stack, attributes and link merge.
    pub fn add_sample(
        &mut self,
        resource: ResourceId,
        profile_type: ProfileTypeId,
        stack: i32,
        attributes: &[i32],
        value: i64,
        timestamp: Option<u64>,
    ) {
        self.add_linked_sample(
            resource,
            profile_type,
            stack,
            attributes,
            0,
            value,
            timestamp,
        )
    }

    /// [`ProfileBuilder::add_sample`] with a link (from
    /// [`ProfileBuilder::link`]; 0 is none).
    #[allow(clippy::too_many_arguments)]
    pub fn add_linked_sample(
        &mut self,
        resource: ResourceId,
        profile_type: ProfileTypeId,
        stack: i32,
        attributes: &[i32],
        link: i32,
        value: i64,
        timestamp: Option<u64>,
    ) {
        let entry = &mut self.resources[resource.0];
        if entry.profiles.len() <= profile_type.0 {
            entry.profiles.resize_with(profile_type.0 + 1, || None);
        }
        let profile =
            entry.profiles[profile_type.0].get_or_insert_with(|| ProfileUnderConstruction {
                samples: Vec::new(),
                index: HashMap::new(),
            });
        let mut attributes = attributes.to_vec();
        attributes.sort_unstable();
        attributes.dedup();
        let key = SampleKey {
            stack,
            attributes,
            link,
        };
        let slot = match profile.index.get(&key) {
            Some(&slot) => slot,
            None => {
                profile.samples.push((key.clone(), Observations::default()));
                profile.index.insert(key, profile.samples.len() - 1);
                self.distinct_samples += 1;
                profile.samples.len() - 1
            }
        };
        let obs = &mut profile.samples[slot].1;
        match timestamp {
            Some(ts) => {
                obs.values.push(value);
                obs.timestamps.push(ts);
            }
            None => {
                let sum = obs.untimed.get_or_insert(0);
                *sum = sum.saturating_add(value);
            }
        }
    }

    /// Number of distinct samples so far (after merging).
    pub fn sample_count(&self) -> usize {
        self.distinct_samples
    }

    pub fn finish(self) -> ProfilesData {
        let mut strings = self.strings;
        let mut intern = |s: &str| -> i32 {
            if let Some(&i) = strings.index.get(s) {
                return i;
            }
            strings.intern(s.to_owned(), || s.to_owned())
        };
        let value_types: Vec<(ValueType, ValueType)> = self
            .profile_types
            .iter()
            .map(|c| {
                (
                    ValueType {
                        type_strindex: intern(&c.sample_type.0),
                        unit_strindex: intern(&c.sample_type.1),
                    },
                    ValueType {
                        type_strindex: intern(&c.period_type.0),
                        unit_strindex: intern(&c.period_type.1),
                    },
                )
            })
            .collect();
        let mut resource_profiles = Vec::with_capacity(self.resources.len());
        for resource in self.resources {
            let mut profiles = Vec::new();
            for (type_index, profile) in resource.profiles.into_iter().enumerate() {
                let Some(profile) = profile else { continue };
                let config = &self.profile_types[type_index];
                let samples = profile
                    .samples
                    .into_iter()
                    .flat_map(|(key, obs)| finish_sample(key, obs))
                    .collect();
                profiles.push(Profile {
                    sample_type: Some(value_types[type_index].0),
                    samples,
                    time_unix_nano: config.time_unix_nano,
                    duration_nano: config.duration_nano,
                    period_type: Some(value_types[type_index].1),
                    period: config.period,
                    ..Profile::default()
                });
            }
            resource_profiles.push(ResourceProfiles {
                resource: Some(Resource {
                    attributes: resource.attributes,
                    ..Resource::default()
                }),
                scope_profiles: vec![ScopeProfiles {
                    scope: Some(self.scope.clone()),
                    profiles,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            });
        }
        ProfilesData {
            resource_profiles,
            dictionary: Some(ProfilesDictionary {
                mapping_table: self.mappings.rows,
                location_table: self.locations.rows,
                function_table: self.functions.rows,
                link_table: self.links.rows,
                string_table: strings.rows,
                attribute_table: self.attributes.rows,
                stack_table: self.stacks.rows,
            }),
        }
    }
}

/// One merged sample becomes one `Sample` per shape: timed observations
/// (timestamps, with values only when some value is not 1) and the sum of
/// untimed ones.
fn finish_sample(key: SampleKey, obs: Observations) -> Vec<Sample> {
    let mut out = Vec::with_capacity(1);
    if !obs.timestamps.is_empty() {
        let values = if obs.values.iter().all(|&v| v == 1) {
            Vec::new()
        } else {
            obs.values
        };
        out.push(Sample {
            stack_index: key.stack,
            attribute_indices: key.attributes.clone(),
            link_index: key.link,
            values,
            timestamps_unix_nano: obs.timestamps,
        });
    }
    if let Some(sum) = obs.untimed {
        out.push(Sample {
            stack_index: key.stack,
            attribute_indices: key.attributes,
            link_index: key.link,
            values: vec![sum],
            timestamps_unix_nano: Vec::new(),
        });
    }
    out
}

/// An `AnyValue` holding a string.
pub fn string_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    }
}

/// An `AnyValue` holding an integer.
pub fn int_value(i: i64) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::IntValue(i)),
    }
}

/// A resource attribute.
pub fn key_value(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(value),
        ..KeyValue::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(name: &str) -> LocationSpec {
        LocationSpec {
            lines: vec![SourceLine::function(name)],
            ..LocationSpec::default()
        }
    }

    #[test]
    fn tables_start_with_zero_values_and_intern_once() {
        let mut b = ProfileBuilder::new(ProfileConfig::cpu(99, 1, 2));
        let r = b.resource(vec![key_value("process.pid", int_value(7))]);
        let t = b.default_profile_type();
        let a = b.location(&leaf("a"));
        let a2 = b.location(&leaf("a"));
        assert_eq!(a, a2);
        let s = b.stack(&[a]);
        b.add_sample(r, t, s, &[], 1, Some(10));
        b.add_sample(r, t, s, &[], 1, Some(11));
        let data = b.finish();
        let d = data.dictionary.as_ref().unwrap();
        assert_eq!(d.string_table[0], "");
        assert_eq!(d.location_table[0], Location::default());
        assert_eq!(d.function_table.len(), 2);
        let samples = &data.resource_profiles[0].scope_profiles[0].profiles[0].samples;
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].timestamps_unix_nano, vec![10, 11]);
        assert!(samples[0].values.is_empty());
    }

    #[test]
    fn untimed_samples_sum_and_resources_split() {
        let mut b = ProfileBuilder::new(ProfileConfig::cpu(99, 1, 2));
        let r1 = b.resource(vec![key_value("process.pid", int_value(1))]);
        let r2 = b.resource(vec![key_value("process.pid", int_value(2))]);
        let t = b.default_profile_type();
        let loc = b.location(&leaf("f"));
        let s = b.stack(&[loc]);
        b.add_sample(r1, t, s, &[], 3, None);
        b.add_sample(r1, t, s, &[], 4, None);
        b.add_sample(r2, t, s, &[], 5, None);
        let data = b.finish();
        assert_eq!(data.resource_profiles.len(), 2);
        let p1 = &data.resource_profiles[0].scope_profiles[0].profiles[0];
        assert_eq!(p1.samples[0].values, vec![7]);
        assert_eq!(p1.period, 10_101_010);
    }
}
