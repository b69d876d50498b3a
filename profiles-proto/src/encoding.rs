//! OTLP encodings of a `ProfilesData`: protobuf binary (as `ProfilesData` or
//! `ExportProfilesServiceRequest`, which share one wire layout), gzip, and the
//! OTLP/JSON mapping (proto3 JSON with lowerCamelCase keys and hex ids).

use std::io::{Read, Write};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::otlp::collector::profiles::v1development::ExportProfilesServiceRequest;
use crate::otlp::profiles::v1development::ProfilesData;
use crate::validate::validate;

/// Largest decompressed size accepted from a gzip stream (a guard against
/// decompression bombs; real profiles are far smaller).
pub const MAX_DECOMPRESSED_BYTES: u64 = 4 << 30;

const PROFILES_DATA: &str = "opentelemetry.proto.profiles.v1development.ProfilesData";
/// OTLP/JSON writes these `bytes` fields as hex, not base64.
const HEX_FIELDS: [&str; 3] = ["traceId", "spanId", "profileId"];

/// True when `bytes` starts with the gzip magic number.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Decompresses a gzip stream, refusing output above [`MAX_DECOMPRESSED_BYTES`].
pub fn gunzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    GzDecoder::new(bytes)
        .take(MAX_DECOMPRESSED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(Error::Gzip)?;
    if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(Error::TooLarge {
            limit: MAX_DECOMPRESSED_BYTES,
        });
    }
    Ok(out)
}

/// `bytes` decompressed when they are gzip, else as they are.
pub fn gunzip_if_gzip(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    if is_gzip(bytes) {
        Ok(std::borrow::Cow::Owned(gunzip(bytes)?))
    } else {
        Ok(std::borrow::Cow::Borrowed(bytes))
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::default(),
    );
    // Writing to a Vec cannot fail.
    enc.write_all(bytes).expect("write to Vec");
    enc.finish().expect("write to Vec")
}

/// Decodes and validates OTLP binary (`ProfilesData` or an
/// `ExportProfilesServiceRequest`, plain or gzip).
pub fn decode_binary(bytes: &[u8]) -> Result<ProfilesData> {
    let bytes = gunzip_if_gzip(bytes)?;
    let data = ProfilesData::decode(&*bytes).map_err(|error| Error::Protobuf {
        format: "OTLP",
        error,
    })?;
    validate(&data)?;
    Ok(data)
}

pub fn encode_binary(data: &ProfilesData) -> Vec<u8> {
    data.encode_to_vec()
}

/// The collector request carrying the same resources and dictionary.
pub fn to_export_request(data: ProfilesData) -> ExportProfilesServiceRequest {
    ExportProfilesServiceRequest {
        resource_profiles: data.resource_profiles,
        dictionary: data.dictionary,
    }
}

pub fn from_export_request(request: ExportProfilesServiceRequest) -> ProfilesData {
    ProfilesData {
        resource_profiles: request.resource_profiles,
        dictionary: request.dictionary,
    }
}

fn profiles_data_descriptor() -> Result<MessageDescriptor> {
    let pool = DescriptorPool::decode(opentelemetry_proto::DESCRIPTORS)
        .map_err(|e| Error::Json(format!("OTLP descriptors unusable: {e}")))?;
    pool.get_message_by_name(PROFILES_DATA)
        .ok_or_else(|| Error::Json(format!("{PROFILES_DATA} missing from OTLP descriptors")))
}

/// Encodes as OTLP/JSON.
pub fn encode_json(data: &ProfilesData) -> Result<Vec<u8>> {
    let desc = profiles_data_descriptor()?;
    let dynamic = DynamicMessage::decode(desc, encode_binary(data).as_slice())
        .map_err(|e| Error::Encode(e.to_string()))?;
    let options = SerializeOptions::new()
        .use_enum_numbers(true)
        .skip_default_fields(true);
    let mut value = dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| Error::Encode(e.to_string()))?;
    recode_ids(&mut value, base64_to_hex)?;
    let mut out = serde_json::to_vec(&value).map_err(|e| Error::Encode(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

/// Decodes and validates OTLP/JSON; both lowerCamelCase and original field
/// names are accepted, unknown fields are ignored.
pub fn decode_json(bytes: &[u8]) -> Result<ProfilesData> {
    let mut value: Value = serde_json::from_slice(bytes).map_err(|e| Error::Json(e.to_string()))?;
    if !value.is_object() {
        return Err(Error::Json("top level is not an object".into()));
    }
    recode_ids(&mut value, hex_to_base64)?;
    let desc = profiles_data_descriptor()?;
    let dynamic = DynamicMessage::deserialize_with_options(
        desc,
        value,
        &DeserializeOptions::new().deny_unknown_fields(false),
    )
    .map_err(|e| Error::Json(e.to_string()))?;
    let data = ProfilesData::decode(dynamic.encode_to_vec().as_slice()).map_err(|error| {
        Error::Protobuf {
            format: "OTLP",
            error,
        }
    })?;
    validate(&data)?;
    Ok(data)
}

fn recode_ids(value: &mut Value, recode: fn(&str) -> Result<String>) -> Result<()> {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let snake = matches!(key.as_str(), "trace_id" | "span_id" | "profile_id");
                if HEX_FIELDS.contains(&key.as_str()) || snake {
                    if let Value::String(s) = v {
                        *s = recode(s)?;
                    }
                } else {
                    recode_ids(v, recode)?;
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                recode_ids(v, recode)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn base64_to_hex(s: &str) -> Result<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| Error::Encode(format!("id {s:?}: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn hex_to_base64(s: &str) -> Result<String> {
    use base64::Engine;
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Json(format!("id {s:?} is not hex")));
    }
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
        .collect();
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::*;

    fn sample() -> ProfilesData {
        let mut b = ProfileBuilder::new(ProfileConfig::cpu(
            99,
            1_700_000_000_000_000_000,
            5_000_000_000,
        ));
        let r = b.resource(vec![key_value("process.pid", int_value(42))]);
        let t = b.default_profile_type();
        let leaf = b.location(&LocationSpec {
            mapping: Some(MappingSpec {
                memory_start: 0x1000,
                memory_limit: 0x2000,
                file_offset: 0,
                filename: "/bin/x".into(),
                build_id: Some("abcd".into()),
            }),
            address: 0x1234,
            lines: vec![
                SourceLine {
                    function: "inner".into(),
                    file: "x.c".into(),
                    line: 3,
                    ..Default::default()
                },
                SourceLine::function("outer"),
            ],
            frame_type: FrameType::Native,
        });
        let s = b.stack(&[leaf]);
        let a = b.attribute("thread.name", string_value("main"), "");
        b.add_sample(r, t, s, &[a], 1, Some(1_700_000_000_000_000_001));
        let mut data = b.finish();
        data.resource_profiles[0].scope_profiles[0].profiles[0].profile_id = (1..=16).collect();
        data
    }

    #[test]
    fn binary_and_gzip_round_trip() {
        let data = sample();
        assert_eq!(decode_binary(&encode_binary(&data)).unwrap(), data);
        assert_eq!(decode_binary(&gzip(&encode_binary(&data))).unwrap(), data);
    }

    #[test]
    fn json_round_trip_uses_hex_ids_and_camel_case() {
        let data = sample();
        let json = encode_json(&data).unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(
            text.contains("\"profileId\":\"0102030405060708090a0b0c0d0e0f10\""),
            "{text}"
        );
        assert!(text.contains("\"resourceProfiles\""));
        assert_eq!(decode_json(&json).unwrap(), data);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_binary(b"\xff\xff\xff\xff").is_err());
        assert!(decode_json(b"{\"resourceProfiles\": 5}").is_err());
        assert!(decode_binary(&[0x1f, 0x8b, 0, 1]).is_err());
    }
}
