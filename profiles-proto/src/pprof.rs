//! pprof (`perftools.profiles.Profile`) in both directions.
//!
//! The message types are derived here with prost from the published
//! `profile.proto` (including `Line.column` and `doc_url`): the `pprof`
//! crate's generated types are built on prost 0.12, and mixing two prost
//! generations in one crate would cost more than these few structs.
//!
//! Mapping to OTLP: each pprof sample type becomes an OTLP profile type; a
//! `cpu`/`nanoseconds` column that is exactly `samples` x `period` is the one
//! this module adds on export and is folded back on import. Labels whose key
//! is a resource attribute (`process.*`, `container.*`, `service.*`, `host.*`,
//! `k8s.*`) rebuild the resources; the other labels are sample attributes.

use std::collections::HashMap;

use prost::Message;

use crate::builder::{
    int_value, key_value, string_value, FrameType, LocationSpec, MappingSpec, ProfileBuilder,
    ProfileConfig, ProfileTypeId, SourceLine, BUILD_ID_KEY,
};
use crate::encoding::{gunzip_if_gzip, gzip};
use crate::error::{Error, Result};
use crate::links::{TraceLink, SPAN_ID_LABEL, TRACE_ID_LABEL};
use crate::otlp::common::v1::{any_value, AnyValue, KeyValue};
use crate::otlp::profiles::v1development::ProfilesData;
use crate::view::{sample_weight, ProfileView};

#[derive(Clone, PartialEq, Message)]
pub struct PprofProfile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<PprofValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<PprofSample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<PprofMapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<PprofLocation>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<PprofFunction>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<PprofValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
    #[prost(int64, tag = "15")]
    pub doc_url: i64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Message)]
pub struct PprofValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PprofSample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<PprofLabel>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PprofLabel {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PprofMapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct PprofLocation {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<PprofLine>,
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct PprofLine {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
    #[prost(int64, tag = "3")]
    pub column: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PprofFunction {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

const KERNEL_MAPPING: &str = "[kernel.kallsyms]";
const RESOURCE_PREFIXES: [&str; 5] = ["process.", "container.", "service.", "host.", "k8s."];

fn is_resource_key(key: &str) -> bool {
    RESOURCE_PREFIXES.iter().any(|p| key.starts_with(p))
}

struct PprofStrings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl PprofStrings {
    fn new() -> Self {
        PprofStrings {
            table: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), self.table.len() as i64 - 1);
        self.table.len() as i64 - 1
    }
}

/// Converts a validated `ProfilesData` to a pprof profile.
pub fn to_pprof(data: &ProfilesData) -> PprofProfile {
    let view = ProfileView::new(data);
    let dict = view.dictionary();
    let mut strings = PprofStrings::new();

    // OTLP table index i becomes pprof id i; index 0 (the zero value) is never emitted.
    let function: Vec<PprofFunction> = dict
        .function_table
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, f)| PprofFunction {
            id: i as u64,
            name: strings.get(view.string(f.name_strindex)),
            system_name: strings.get(view.string(f.system_name_strindex)),
            filename: strings.get(view.string(f.filename_strindex)),
            start_line: f.start_line,
        })
        .collect();
    let mut mapping: Vec<PprofMapping> = dict
        .mapping_table
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, m)| {
            let build_id = view
                .attributes(&m.attribute_indices)
                .find(|(k, _)| *k == BUILD_ID_KEY)
                .map(|(_, v)| any_value_to_string(v))
                .unwrap_or_default();
            PprofMapping {
                id: i as u64,
                memory_start: m.memory_start,
                memory_limit: m.memory_limit,
                file_offset: m.file_offset,
                filename: strings.get(view.string(m.filename_strindex)),
                build_id: strings.get(&build_id),
                ..PprofMapping::default()
            }
        })
        .collect();
    // pprof has no frame types: kernel frames without a mapping get perf's
    // `[kernel.kallsyms]` mapping, which the reader turns back into the type.
    let kernel_mapping_id = mapping.len() as u64 + 1;
    let location: Vec<PprofLocation> = dict
        .location_table
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, l)| {
            if l.mapping_index > 0 {
                let m = &mut mapping[l.mapping_index as usize - 1];
                m.has_functions |= !l.lines.is_empty();
                m.has_filenames |= l.lines.iter().any(|line| {
                    !view
                        .string(dict.function_table[line.function_index as usize].filename_strindex)
                        .is_empty()
                });
                m.has_line_numbers |= l.lines.iter().any(|line| line.line != 0);
                m.has_inline_frames |= l.lines.len() > 1;
            }
            let kernel_without_mapping =
                l.mapping_index == 0 && view.frame_type(l) == FrameType::Kernel;
            PprofLocation {
                id: i as u64,
                mapping_id: if kernel_without_mapping {
                    kernel_mapping_id
                } else {
                    l.mapping_index as u64
                },
                address: l.address,
                line: l
                    .lines
                    .iter()
                    .map(|line| PprofLine {
                        function_id: line.function_index as u64,
                        line: line.line,
                        column: line.column,
                    })
                    .collect(),
                is_folded: false,
            }
        })
        .collect();

    // One column per distinct sample type; CPU sample counts also get the
    // derived cpu/nanoseconds column that pprof tools expect.
    let mut columns: Vec<(String, String)> = Vec::new();
    let column_of = |t: (String, String), columns: &mut Vec<(String, String)>| -> usize {
        columns.iter().position(|c| *c == t).unwrap_or_else(|| {
            columns.push(t);
            columns.len() - 1
        })
    };
    let mut sample = Vec::new();
    let (mut start, mut end) = (u64::MAX, 0u64);
    let mut period = None;
    for (resource, profile) in view.profiles() {
        let sample_type = view.value_type(profile.sample_type.as_ref());
        let period_type = view.value_type(profile.period_type.as_ref());
        let count_col = column_of(sample_type.clone(), &mut columns);
        let derived = is_cpu_count(&sample_type, &period_type)
            .then(|| column_of(period_type.clone(), &mut columns));
        period.get_or_insert((period_type, profile.period));
        if profile.time_unix_nano != 0 {
            start = start.min(profile.time_unix_nano);
            end = end.max(profile.time_unix_nano.saturating_add(profile.duration_nano));
        }
        let resource_labels: Vec<PprofLabel> = resource
            .map(|r| {
                r.attributes
                    .iter()
                    .map(|kv| label(&mut strings, &kv.key, kv.value.as_ref()))
                    .collect()
            })
            .unwrap_or_default();
        for s in &profile.samples {
            let count = sample_weight(s);
            let mut labels = resource_labels.clone();
            for (k, v) in view.attributes(&s.attribute_indices) {
                labels.push(label(&mut strings, k, Some(v)));
            }
            if s.link_index > 0 {
                if let Some(link) = crate::links::sample_link(&view, s) {
                    let trace = string_value(&link.trace_id_hex());
                    let span = string_value(&link.span_id_hex());
                    labels.push(label(&mut strings, TRACE_ID_LABEL, Some(&trace)));
                    labels.push(label(&mut strings, SPAN_ID_LABEL, Some(&span)));
                }
            }
            let mut values = vec![(count_col, count)];
            if let Some(col) = derived {
                values.push((col, count.saturating_mul(profile.period)));
            }
            sample.push(PprofSample {
                location_id: dict.stack_table[s.stack_index as usize]
                    .location_indices
                    .iter()
                    .filter(|&&i| i > 0)
                    .map(|&i| i as u64)
                    .collect(),
                value: values
                    .into_iter()
                    .fold(Vec::new(), |mut acc: Vec<i64>, (c, v)| {
                        acc.resize(acc.len().max(c + 1), 0);
                        acc[c] = v;
                        acc
                    }),
                label: labels,
            });
        }
    }
    if location.iter().any(|l| l.mapping_id == kernel_mapping_id) {
        mapping.push(PprofMapping {
            id: kernel_mapping_id,
            filename: strings.get(KERNEL_MAPPING),
            has_functions: true,
            ..PprofMapping::default()
        });
    }
    let width = columns.len();
    for s in &mut sample {
        s.value.resize(width, 0);
    }
    let sample_type = columns
        .iter()
        .map(|(t, u)| PprofValueType {
            r#type: strings.get(t),
            unit: strings.get(u),
        })
        .collect();
    let period_type = period.as_ref().map(|((t, u), _)| PprofValueType {
        r#type: strings.get(t),
        unit: strings.get(u),
    });
    PprofProfile {
        sample_type,
        sample,
        mapping,
        location,
        function,
        time_nanos: if start == u64::MAX { 0 } else { start as i64 },
        duration_nanos: end.saturating_sub(start.min(end)) as i64,
        period_type,
        period: period.map_or(0, |(_, p)| p),
        string_table: strings.table,
        ..PprofProfile::default()
    }
}

fn is_cpu_count(sample_type: &(String, String), period_type: &(String, String)) -> bool {
    sample_type.0 == "samples"
        && sample_type.1 == "count"
        && period_type.0 == "cpu"
        && period_type.1 == "nanoseconds"
}

fn label(strings: &mut PprofStrings, key: &str, value: Option<&AnyValue>) -> PprofLabel {
    let key = strings.get(key);
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::IntValue(n)) => PprofLabel {
            key,
            num: *n,
            ..PprofLabel::default()
        },
        _ => PprofLabel {
            key,
            str: strings.get(&value.map(any_value_to_string).unwrap_or_default()),
            ..PprofLabel::default()
        },
    }
}

/// A printable form of an attribute value.
pub fn any_value_to_string(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => b.iter().map(|x| format!("{x:02x}")).collect(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

pub fn encode_pprof(data: &ProfilesData) -> Vec<u8> {
    gzip(&to_pprof(data).encode_to_vec())
}

/// Decodes a pprof profile, plain or gzip, and converts it to OTLP.
pub fn decode_pprof(bytes: &[u8]) -> Result<ProfilesData> {
    let bytes = gunzip_if_gzip(bytes)?;
    let profile = PprofProfile::decode(&*bytes).map_err(|error| Error::Protobuf {
        format: "pprof",
        error,
    })?;
    from_pprof(&profile)
}

/// Converts a pprof profile to OTLP, checking every index it follows.
pub fn from_pprof(p: &PprofProfile) -> Result<ProfilesData> {
    let bad = |what: String| Error::InvalidPprof(what);
    if p.string_table.first().map(String::as_str) != Some("") {
        return Err(bad("string_table[0] must be the empty string".into()));
    }
    let string = |i: i64, what: &str| -> Result<&str> {
        usize::try_from(i)
            .ok()
            .and_then(|i| p.string_table.get(i))
            .map(String::as_str)
            .ok_or_else(|| {
                bad(format!(
                    "{what}: string index {i} out of range ({} strings)",
                    p.string_table.len()
                ))
            })
    };
    let value_type = |vt: Option<&PprofValueType>, what: &str| -> Result<(String, String)> {
        let vt = vt.copied().unwrap_or_default();
        Ok((
            string(vt.r#type, what)?.to_owned(),
            string(vt.unit, what)?.to_owned(),
        ))
    };
    let period_type = value_type(p.period_type.as_ref(), "period_type")?;
    let sample_types = p
        .sample_type
        .iter()
        .map(|vt| value_type(Some(vt), "sample_type"))
        .collect::<Result<Vec<_>>>()?;
    if sample_types.is_empty() && !p.sample.is_empty() {
        return Err(bad("samples present but no sample_type".into()));
    }
    let count_col = sample_types
        .iter()
        .position(|t| t.0 == "samples" && t.1 == "count");
    let derived_col = count_col.and_then(|c| {
        let cpu = sample_types
            .iter()
            .position(|t| *t == period_type && t.0 == "cpu" && t.1 == "nanoseconds")?;
        p.sample
            .iter()
            .all(|s| {
                s.value.get(cpu).copied().unwrap_or(0)
                    == s.value
                        .get(c)
                        .copied()
                        .unwrap_or(0)
                        .saturating_mul(p.period)
            })
            .then_some(cpu)
    });

    let mut functions = HashMap::new();
    for f in &p.function {
        let line = SourceLine {
            function: string(f.name, "function.name")?.to_owned(),
            system_name: string(f.system_name, "function.system_name")?.to_owned(),
            file: string(f.filename, "function.filename")?.to_owned(),
            ..SourceLine::default()
        };
        functions.insert(f.id, line);
    }
    let mut mappings = HashMap::new();
    for m in &p.mapping {
        let build_id = string(m.build_id, "mapping.build_id")?;
        mappings.insert(
            m.id,
            MappingSpec {
                memory_start: m.memory_start,
                memory_limit: m.memory_limit,
                file_offset: m.file_offset,
                filename: string(m.filename, "mapping.filename")?.to_owned(),
                build_id: (!build_id.is_empty()).then(|| build_id.to_owned()),
            },
        );
    }
    let start = u64::try_from(p.time_nanos).unwrap_or(0);
    let duration = u64::try_from(p.duration_nanos).unwrap_or(0);
    let config = |t: &(String, String)| ProfileConfig {
        sample_type: t.clone(),
        period_type: period_type.clone(),
        period: p.period,
        time_unix_nano: start,
        duration_nano: duration,
    };
    let mut builder = ProfileBuilder::new(config(
        sample_types
            .first()
            .unwrap_or(&("samples".into(), "count".into())),
    ));
    let mut type_ids: Vec<Option<ProfileTypeId>> = Vec::with_capacity(sample_types.len());
    for (i, t) in sample_types.iter().enumerate() {
        type_ids.push(match i {
            0 => Some(builder.default_profile_type()),
            _ if Some(i) == derived_col => None,
            _ => Some(builder.add_profile_type(config(t))),
        });
    }

    let mut locations: HashMap<u64, i32> = HashMap::new();
    for l in &p.location {
        let mapping = match l.mapping_id {
            0 => None,
            id => Some(
                mappings
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| bad(format!("location {} names unknown mapping {id}", l.id)))?,
            ),
        };
        let lines = l
            .line
            .iter()
            .map(|line| {
                let mut source = functions.get(&line.function_id).cloned().ok_or_else(|| {
                    bad(format!(
                        "location {} names unknown function {}",
                        l.id, line.function_id
                    ))
                })?;
                source.line = line.line;
                source.column = line.column;
                Ok(source)
            })
            .collect::<Result<Vec<_>>>()?;
        let kernel = mapping
            .as_ref()
            .is_some_and(|m| m.filename.starts_with("[kernel"));
        // The synthetic mapping of `to_pprof` carries only the frame type.
        let mapping = mapping.filter(|m| {
            !(m.filename == KERNEL_MAPPING && m.memory_start == 0 && m.memory_limit == 0)
        });
        let spec = LocationSpec {
            mapping,
            address: l.address,
            lines,
            frame_type: if kernel {
                FrameType::Kernel
            } else {
                FrameType::Native
            },
        };
        locations.insert(l.id, builder.location(&spec));
    }

    for (n, s) in p.sample.iter().enumerate() {
        if s.value.len() != sample_types.len() {
            return Err(bad(format!(
                "sample {n} has {} values for {} sample types",
                s.value.len(),
                sample_types.len()
            )));
        }
        let stack: Vec<i32> = s
            .location_id
            .iter()
            .map(|id| {
                locations
                    .get(id)
                    .copied()
                    .ok_or_else(|| bad(format!("sample {n} names unknown location {id}")))
            })
            .collect::<Result<_>>()?;
        let stack = builder.stack(&stack);
        let mut resource_attrs: Vec<KeyValue> = Vec::new();
        let mut sample_attrs = Vec::new();
        // The `trace_id` and `span_id` labels, valid together, are the link.
        let label_str = |name: &str| {
            s.label
                .iter()
                .find(|l| l.str != 0 && string(l.key, "label.key").is_ok_and(|k| k == name))
                .and_then(|l| string(l.str, "label.str").ok())
        };
        let link = match (label_str(TRACE_ID_LABEL), label_str(SPAN_ID_LABEL)) {
            (Some(t), Some(sp)) => TraceLink::from_hex(t, sp),
            _ => None,
        };
        let link_index = link.map_or(0, |l| builder.link(l.trace_id, l.span_id));
        for l in &s.label {
            let key = string(l.key, "label.key")?;
            let value = if l.str != 0 {
                string_value(string(l.str, "label.str")?)
            } else {
                int_value(l.num)
            };
            if link.is_some() && (key == TRACE_ID_LABEL || key == SPAN_ID_LABEL) {
                continue;
            }
            if is_resource_key(key) {
                resource_attrs.push(key_value(key, value));
            } else {
                let unit = string(l.num_unit, "label.num_unit")?;
                sample_attrs.push(builder.attribute(key, value, unit));
            }
        }
        let resource = builder.resource(resource_attrs);
        for (col, &value) in s.value.iter().enumerate() {
            if let Some(t) = type_ids[col] {
                if value != 0 {
                    builder.add_linked_sample(
                        resource,
                        t,
                        stack,
                        &sample_attrs,
                        link_index,
                        value,
                        None,
                    );
                }
            }
        }
    }
    let data = builder.finish();
    crate::validate::validate(&data)?;
    Ok(data)
}
