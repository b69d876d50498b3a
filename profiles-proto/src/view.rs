//! `ProfileView`: read-only access to a validated `ProfilesData` that
//! resolves dictionary indices (strings, attributes, stacks, frames).
//! Writers (pprof, folded, flamegraph) read profiles only through it.

use std::borrow::Cow;

use crate::builder::{FrameType, FRAME_TYPE_KEY};
use crate::otlp::common::v1::{any_value, AnyValue};
use crate::otlp::profiles::v1development::{
    Location, Profile, ProfilesData, ProfilesDictionary, ValueType,
};
use crate::otlp::resource::v1::Resource;

/// One source line of a frame, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLine<'a> {
    pub function: &'a str,
    pub file: &'a str,
    pub line: i64,
    /// True for every line of a location but the last: these functions were
    /// inlined into the one after them.
    pub inlined: bool,
}

pub struct ProfileView<'a> {
    data: &'a ProfilesData,
    dict: Cow<'a, ProfilesDictionary>,
}

impl<'a> ProfileView<'a> {
    /// A view of `data`; indices out of range resolve to zero values, so
    /// callers should have run `validate` on anything from outside.
    pub fn new(data: &'a ProfilesData) -> ProfileView<'a> {
        let dict = match &data.dictionary {
            Some(d) => Cow::Borrowed(d),
            None => Cow::Owned(ProfilesDictionary::default()),
        };
        ProfileView { data, dict }
    }

    pub fn data(&self) -> &'a ProfilesData {
        self.data
    }

    pub fn dictionary(&self) -> &ProfilesDictionary {
        &self.dict
    }

    pub fn string(&self, index: i32) -> &str {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.dict.string_table.get(i))
            .map_or("", String::as_str)
    }

    pub fn value_type(&self, vt: Option<&ValueType>) -> (String, String) {
        let vt = vt.copied().unwrap_or_default();
        (
            self.string(vt.type_strindex).to_owned(),
            self.string(vt.unit_strindex).to_owned(),
        )
    }

    /// Resolves attribute indices to (key, value) pairs.
    pub fn attributes<'s>(
        &'s self,
        indices: &'s [i32],
    ) -> impl Iterator<Item = (&'s str, &'s AnyValue)> + 's {
        indices.iter().filter(|&&i| i > 0).filter_map(move |&i| {
            let kv = self.dict.attribute_table.get(i as usize)?;
            Some((self.string(kv.key_strindex), kv.value.as_ref()?))
        })
    }

    /// The string or integer value of attribute `key` among `indices`.
    pub fn attribute<'s>(&'s self, indices: &'s [i32], key: &str) -> Option<&'s AnyValue> {
        self.attributes(indices)
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Every profile with the resource it belongs to.
    pub fn profiles(&self) -> impl Iterator<Item = (Option<&'a Resource>, &'a Profile)> + 'a {
        self.data.resource_profiles.iter().flat_map(|rp| {
            rp.scope_profiles
                .iter()
                .flat_map(move |sp| sp.profiles.iter().map(move |p| (rp.resource.as_ref(), p)))
        })
    }

    /// The total weight ([`sample_weight`]) of the profiles whose sample
    /// type is named `sample_type` (e.g. `off_cpu`), over every resource.
    pub fn total_of_sample_type(&self, sample_type: &str) -> i64 {
        self.profiles()
            .filter(|(_, p)| self.value_type(p.sample_type.as_ref()).0 == sample_type)
            .flat_map(|(_, p)| &p.samples)
            .fold(0i64, |a, s| a.saturating_add(sample_weight(s)))
    }

    /// The locations of stack `index`, leaf first.
    pub fn stack(&self, index: i32) -> impl Iterator<Item = &Location> {
        let stack = usize::try_from(index)
            .ok()
            .and_then(|i| self.dict.stack_table.get(i));
        stack
            .into_iter()
            .flat_map(|s| s.location_indices.iter())
            .filter_map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.dict.location_table.get(i))
            })
    }

    pub fn frame_type(&self, location: &Location) -> FrameType {
        match self.attribute(&location.attribute_indices, FRAME_TYPE_KEY) {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) => FrameType::parse(s).unwrap_or_default(),
            _ => FrameType::Native,
        }
    }

    /// The lines of a location, innermost inlined function first.
    pub fn lines<'s>(
        &'s self,
        location: &'s Location,
    ) -> impl DoubleEndedIterator<Item = FrameLine<'s>> + 's {
        let last = location.lines.len().saturating_sub(1);
        location.lines.iter().enumerate().map(move |(i, line)| {
            let f = usize::try_from(line.function_index)
                .ok()
                .and_then(|i| self.dict.function_table.get(i))
                .copied()
                .unwrap_or_default();
            FrameLine {
                function: self.string(f.name_strindex),
                file: self.string(f.filename_strindex),
                line: line.line,
                inlined: i < last,
            }
        })
    }

    /// The mapping file name of a location, if it has a mapping.
    pub fn mapping_name(&self, location: &Location) -> Option<&str> {
        let m = self
            .dict
            .mapping_table
            .get(usize::try_from(location.mapping_index).ok()?)?;
        (location.mapping_index > 0).then(|| self.string(m.filename_strindex))
    }
}

/// Number of observations a sample stands for: the sum of its values, or
/// one per timestamp when it has only timestamps.
pub fn sample_weight(sample: &crate::otlp::profiles::v1development::Sample) -> i64 {
    if sample.values.is_empty() {
        sample.timestamps_unix_nano.len() as i64
    } else {
        sample.values.iter().fold(0i64, |a, &v| a.saturating_add(v))
    }
}
