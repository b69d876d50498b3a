//! `validate`: the invariants of the `profiles/v1development` schema, checked
//! on a decoded `ProfilesData` before anything else reads it.

use std::collections::HashSet;

use crate::otlp::common::v1::KeyValue;
use crate::otlp::profiles::v1development::{
    Function, KeyValueAndUnit, Link, Location, Mapping, Profile, ProfilesData, ProfilesDictionary,
    Stack,
};

/// The first broken invariant found, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ValidationError {
    pub path: String,
    pub problem: String,
}

fn fail<T>(path: impl Into<String>, problem: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError {
        path: path.into(),
        problem: problem.into(),
    })
}

struct Sizes {
    mappings: usize,
    locations: usize,
    functions: usize,
    links: usize,
    strings: usize,
    attributes: usize,
    stacks: usize,
}

fn check_index(
    path: &str,
    field: &str,
    index: i32,
    len: usize,
    table: &str,
) -> Result<(), ValidationError> {
    if index < 0 || index as usize >= len {
        return fail(
            format!("{path}.{field}"),
            format!("index {index} out of range ({table} has {len} entries)"),
        );
    }
    Ok(())
}

fn check_zero<T: Default + PartialEq>(table: &[T], name: &str) -> Result<(), ValidationError> {
    match table.first() {
        None => fail(
            format!("dictionary.{name}"),
            "is empty; entry 0 must be the zero value",
        ),
        Some(first) if *first != T::default() => {
            fail(format!("dictionary.{name}[0]"), "is not the zero value")
        }
        Some(_) => Ok(()),
    }
}

/// `link_table[0]` is the "no link" entry. The text of opentelemetry-proto
/// v1.10.0 (what the `opentelemetry-proto` crate 0.33 generates from) asks for
/// the zero value `Link{}`; from v1.11.0 the spec says it SHOULD carry a
/// 16-byte zero `trace_id` and an 8-byte zero `span_id`. Both forms mean "no
/// link" and both are accepted.
fn check_zero_link(table: &[Link]) -> Result<(), ValidationError> {
    let Some(Link { trace_id, span_id }) = table.first() else {
        return fail(
            "dictionary.link_table",
            "is empty; entry 0 must be the zero value",
        );
    };
    let empty = trace_id.is_empty() && span_id.is_empty();
    let zero_filled = trace_id.len() == 16
        && span_id.len() == 8
        && trace_id.iter().chain(span_id).all(|&b| b == 0);
    if !(empty || zero_filled) {
        return fail(
            "dictionary.link_table[0]",
            "is not the zero value (empty, or a zero 16-byte trace_id and 8-byte span_id)",
        );
    }
    Ok(())
}

/// Attribute index lists must point into the table and use each key once.
fn check_attribute_indices(
    path: &str,
    indices: &[i32],
    dict: &ProfilesDictionary,
    sizes: &Sizes,
) -> Result<(), ValidationError> {
    let mut keys = HashSet::new();
    for (i, &index) in indices.iter().enumerate() {
        check_index(
            path,
            &format!("attribute_indices[{i}]"),
            index,
            sizes.attributes,
            "attribute_table",
        )?;
        let key = dict.attribute_table[index as usize].key_strindex;
        if index != 0 && !keys.insert(key) {
            let name = dict
                .string_table
                .get(key as usize)
                .map_or("?", String::as_str);
            return fail(
                format!("{path}.attribute_indices[{i}]"),
                format!("repeats attribute key {name:?}"),
            );
        }
    }
    Ok(())
}

fn check_key_values(path: &str, attrs: &[KeyValue], sizes: &Sizes) -> Result<(), ValidationError> {
    for (i, kv) in attrs.iter().enumerate() {
        if kv.key_strindex != 0 {
            check_index(
                &format!("{path}[{i}]"),
                "key_strindex",
                kv.key_strindex,
                sizes.strings,
                "string_table",
            )?;
            if !kv.key.is_empty() {
                return fail(format!("{path}[{i}]"), "sets both key and key_strindex");
            }
        }
    }
    Ok(())
}

/// Checks every invariant of the schema: the zero value at index 0 of every
/// dictionary table, every index in range, attribute keys unique per
/// reference list, sample values/timestamps lengths, and id lengths.
pub fn validate(data: &ProfilesData) -> Result<(), ValidationError> {
    let empty = ProfilesDictionary::default();
    let dict = match &data.dictionary {
        Some(d) => d,
        None if data.resource_profiles.is_empty() => return Ok(()),
        None => &empty,
    };
    check_zero(&dict.mapping_table, "mapping_table")?;
    check_zero(&dict.location_table, "location_table")?;
    check_zero(&dict.function_table, "function_table")?;
    check_zero_link(&dict.link_table)?;
    check_zero(&dict.string_table, "string_table")?;
    check_zero(&dict.attribute_table, "attribute_table")?;
    check_zero(&dict.stack_table, "stack_table")?;
    let sizes = Sizes {
        mappings: dict.mapping_table.len(),
        locations: dict.location_table.len(),
        functions: dict.function_table.len(),
        links: dict.link_table.len(),
        strings: dict.string_table.len(),
        attributes: dict.attribute_table.len(),
        stacks: dict.stack_table.len(),
    };

    for (
        i,
        KeyValueAndUnit {
            key_strindex,
            unit_strindex,
            ..
        },
    ) in dict.attribute_table.iter().enumerate()
    {
        let path = format!("dictionary.attribute_table[{i}]");
        check_index(
            &path,
            "key_strindex",
            *key_strindex,
            sizes.strings,
            "string_table",
        )?;
        check_index(
            &path,
            "unit_strindex",
            *unit_strindex,
            sizes.strings,
            "string_table",
        )?;
    }
    for (i, m) in dict.mapping_table.iter().enumerate() {
        let Mapping {
            memory_start,
            memory_limit,
            filename_strindex,
            attribute_indices,
            ..
        } = m;
        let path = format!("dictionary.mapping_table[{i}]");
        check_index(
            &path,
            "filename_strindex",
            *filename_strindex,
            sizes.strings,
            "string_table",
        )?;
        check_attribute_indices(&path, attribute_indices, dict, &sizes)?;
        if memory_limit < memory_start && *memory_limit != 0 {
            return fail(
                path,
                format!("memory_limit {memory_limit:#x} is below memory_start {memory_start:#x}"),
            );
        }
    }
    for (i, f) in dict.function_table.iter().enumerate() {
        let Function {
            name_strindex,
            system_name_strindex,
            filename_strindex,
            ..
        } = f;
        let path = format!("dictionary.function_table[{i}]");
        check_index(
            &path,
            "name_strindex",
            *name_strindex,
            sizes.strings,
            "string_table",
        )?;
        check_index(
            &path,
            "system_name_strindex",
            *system_name_strindex,
            sizes.strings,
            "string_table",
        )?;
        check_index(
            &path,
            "filename_strindex",
            *filename_strindex,
            sizes.strings,
            "string_table",
        )?;
    }
    for (
        i,
        Location {
            mapping_index,
            lines,
            attribute_indices,
            ..
        },
    ) in dict.location_table.iter().enumerate()
    {
        let path = format!("dictionary.location_table[{i}]");
        check_index(
            &path,
            "mapping_index",
            *mapping_index,
            sizes.mappings,
            "mapping_table",
        )?;
        for (j, line) in lines.iter().enumerate() {
            check_index(
                &path,
                &format!("lines[{j}].function_index"),
                line.function_index,
                sizes.functions,
                "function_table",
            )?;
        }
        check_attribute_indices(&path, attribute_indices, dict, &sizes)?;
    }
    for (i, Stack { location_indices }) in dict.stack_table.iter().enumerate() {
        let path = format!("dictionary.stack_table[{i}]");
        for (j, &index) in location_indices.iter().enumerate() {
            check_index(
                &path,
                &format!("location_indices[{j}]"),
                index,
                sizes.locations,
                "location_table",
            )?;
        }
    }
    for (i, Link { trace_id, span_id }) in dict.link_table.iter().enumerate().skip(1) {
        let path = format!("dictionary.link_table[{i}]");
        if trace_id.len() != 16 {
            return fail(
                path,
                format!("trace_id has {} bytes, not 16", trace_id.len()),
            );
        }
        if span_id.len() != 8 {
            return fail(path, format!("span_id has {} bytes, not 8", span_id.len()));
        }
    }

    for (r, rp) in data.resource_profiles.iter().enumerate() {
        let rpath = format!("resource_profiles[{r}]");
        if let Some(resource) = &rp.resource {
            check_key_values(
                &format!("{rpath}.resource.attributes"),
                &resource.attributes,
                &sizes,
            )?;
        }
        for (s, sp) in rp.scope_profiles.iter().enumerate() {
            let spath = format!("{rpath}.scope_profiles[{s}]");
            if let Some(scope) = &sp.scope {
                check_key_values(
                    &format!("{spath}.scope.attributes"),
                    &scope.attributes,
                    &sizes,
                )?;
            }
            for (p, profile) in sp.profiles.iter().enumerate() {
                check_profile(&format!("{spath}.profiles[{p}]"), profile, dict, &sizes)?;
            }
        }
    }
    Ok(())
}

fn check_profile(
    path: &str,
    profile: &Profile,
    dict: &ProfilesDictionary,
    sizes: &Sizes,
) -> Result<(), ValidationError> {
    for (field, vt) in [
        ("sample_type", &profile.sample_type),
        ("period_type", &profile.period_type),
    ] {
        if let Some(vt) = vt {
            check_index(
                path,
                &format!("{field}.type_strindex"),
                vt.type_strindex,
                sizes.strings,
                "string_table",
            )?;
            check_index(
                path,
                &format!("{field}.unit_strindex"),
                vt.unit_strindex,
                sizes.strings,
                "string_table",
            )?;
        }
    }
    if !profile.profile_id.is_empty() && profile.profile_id.len() != 16 {
        return fail(
            path,
            format!("profile_id has {} bytes, not 16", profile.profile_id.len()),
        );
    }
    if !profile.profile_id.is_empty() && profile.profile_id.iter().all(|&b| b == 0) {
        return fail(path, "profile_id is all zeroes");
    }
    if profile.original_payload_format.is_empty() != profile.original_payload.is_empty() {
        return fail(
            path,
            "original_payload_format and original_payload must be set together",
        );
    }
    check_attribute_indices(path, &profile.attribute_indices, dict, sizes)?;
    for (i, sample) in profile.samples.iter().enumerate() {
        let spath = format!("{path}.samples[{i}]");
        check_index(
            &spath,
            "stack_index",
            sample.stack_index,
            sizes.stacks,
            "stack_table",
        )?;
        check_index(
            &spath,
            "link_index",
            sample.link_index,
            sizes.links,
            "link_table",
        )?;
        check_attribute_indices(&spath, &sample.attribute_indices, dict, sizes)?;
        let (values, stamps) = (sample.values.len(), sample.timestamps_unix_nano.len());
        if values == 0 && stamps == 0 {
            return fail(spath, "has neither values nor timestamps");
        }
        if values != 0 && stamps != 0 && values != stamps {
            return fail(
                spath,
                format!("has {values} values but {stamps} timestamps"),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{LocationSpec, ProfileBuilder, ProfileConfig, SourceLine};

    fn sample_data() -> ProfilesData {
        let mut b = ProfileBuilder::new(ProfileConfig::cpu(99, 0, 0));
        let r = b.resource(Vec::new());
        let loc = b.location(&LocationSpec {
            lines: vec![SourceLine::function("main")],
            ..LocationSpec::default()
        });
        let s = b.stack(&[loc]);
        let t = b.default_profile_type();
        b.add_sample(r, t, s, &[], 1, None);
        b.finish()
    }

    #[test]
    fn builder_output_is_valid() {
        validate(&sample_data()).unwrap();
    }

    #[test]
    fn out_of_range_index_is_reported_with_its_path() {
        let mut data = sample_data();
        data.dictionary.as_mut().unwrap().stack_table[1].location_indices[0] = 99;
        let err = validate(&data).unwrap_err();
        assert_eq!(err.path, "dictionary.stack_table[1].location_indices[0]");
        assert!(err.problem.contains("out of range"), "{err}");
    }

    #[test]
    fn zero_values_are_required() {
        let mut data = sample_data();
        data.dictionary.as_mut().unwrap().string_table[0] = "x".into();
        assert_eq!(
            validate(&data).unwrap_err().path,
            "dictionary.string_table[0]"
        );
        let mut data = sample_data();
        data.dictionary.as_mut().unwrap().link_table.clear();
        assert_eq!(validate(&data).unwrap_err().path, "dictionary.link_table");
    }

    #[test]
    fn both_zero_forms_of_link_table_0_are_accepted() {
        let mut data = sample_data();
        data.dictionary.as_mut().unwrap().link_table[0] = Link {
            trace_id: vec![0; 16],
            span_id: vec![0; 8],
        };
        validate(&data).unwrap();
        for (trace_id, span_id) in [(vec![0; 16], vec![]), (vec![1; 16], vec![0; 8])] {
            data.dictionary.as_mut().unwrap().link_table[0] = Link { trace_id, span_id };
            assert_eq!(
                validate(&data).unwrap_err().path,
                "dictionary.link_table[0]"
            );
        }
    }

    #[test]
    fn values_and_timestamps_lengths_must_agree() {
        let mut data = sample_data();
        let sample = &mut data.resource_profiles[0].scope_profiles[0].profiles[0].samples[0];
        sample.values = vec![1, 2];
        sample.timestamps_unix_nano = vec![5];
        assert!(validate(&data)
            .unwrap_err()
            .problem
            .contains("2 values but 1 timestamps"));
        let sample = &mut data.resource_profiles[0].scope_profiles[0].profiles[0].samples[0];
        sample.values.clear();
        sample.timestamps_unix_nano.clear();
        assert!(validate(&data).is_err());
    }
}
