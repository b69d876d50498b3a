//! Trace links: the span (trace id, span id) a sample was taken in. OTLP
//! carries them in `link_table`; pprof, which has no such table, as the
//! string labels `trace_id` and `span_id` (lowercase hex, as W3C trace
//! context writes them). This module owns that mapping and the filter to
//! one trace.

use crate::otlp::profiles::v1development::{ProfilesData, Sample};
use crate::pprof::any_value_to_string;
use crate::view::ProfileView;

/// pprof label of a sample's trace id.
pub const TRACE_ID_LABEL: &str = "trace_id";
/// pprof label of a sample's span id.
pub const SPAN_ID_LABEL: &str = "span_id";

/// A sample's trace link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceLink {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

impl TraceLink {
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// A link from the hex forms; `None` unless both have the right length
    /// and neither is all zeros (W3C: an all-zero id is invalid).
    pub fn from_hex(trace_id: &str, span_id: &str) -> Option<TraceLink> {
        let link = TraceLink {
            trace_id: parse_hex(trace_id)?,
            span_id: parse_hex(span_id)?,
        };
        link.is_valid().then_some(link)
    }

    pub fn is_valid(&self) -> bool {
        self.trace_id != [0; 16] && self.span_id != [0; 8]
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Parses a trace id given by a user (32 hex digits).
pub fn parse_trace_id(s: &str) -> Result<[u8; 16], String> {
    parse_hex(s.trim())
        .filter(|id| *id != [0; 16])
        .ok_or_else(|| format!("trace id {s:?} is not 32 hex digits (nor all zeros)"))
}

/// The link of `sample`: its `link_table` entry, else the `trace_id` and
/// `span_id` attributes (a profile read from pprof by another tool).
pub fn sample_link(view: &ProfileView<'_>, sample: &Sample) -> Option<TraceLink> {
    let dict = view.dictionary();
    if sample.link_index > 0 {
        let link = dict.link_table.get(sample.link_index as usize)?;
        return Some(TraceLink {
            trace_id: link.trace_id.as_slice().try_into().ok()?,
            span_id: link.span_id.as_slice().try_into().ok()?,
        });
    }
    let trace = view.attribute(&sample.attribute_indices, TRACE_ID_LABEL)?;
    let span = view.attribute(&sample.attribute_indices, SPAN_ID_LABEL)?;
    TraceLink::from_hex(&any_value_to_string(trace), &any_value_to_string(span))
}

/// Keeps only the samples linked to `trace_id`; returns how many are left.
pub fn retain_trace(data: &mut ProfilesData, trace_id: [u8; 16]) -> usize {
    let keep: Vec<Vec<bool>> = {
        let view = ProfileView::new(data);
        view.profiles()
            .map(|(_, p)| {
                p.samples
                    .iter()
                    .map(|s| sample_link(&view, s).is_some_and(|l| l.trace_id == trace_id))
                    .collect()
            })
            .collect()
    };
    let mut kept = 0;
    let profiles = data
        .resource_profiles
        .iter_mut()
        .flat_map(|r| r.scope_profiles.iter_mut())
        .flat_map(|s| s.profiles.iter_mut());
    for (profile, keep) in profiles.zip(keep) {
        let mut flags = keep.into_iter();
        profile.samples.retain(|_| flags.next().unwrap_or(false));
        kept += profile.samples.len();
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{string_value, ProfileBuilder, ProfileConfig};

    #[test]
    fn hex_round_trip_and_bad_ids() {
        let link = TraceLink {
            trace_id: *b"0123456789abcdef",
            span_id: *b"spanid!!",
        };
        let back = TraceLink::from_hex(&link.trace_id_hex(), &link.span_id_hex());
        assert_eq!(back, Some(link));
        assert_eq!(TraceLink::from_hex("00", "11"), None);
        assert_eq!(TraceLink::from_hex(&"0".repeat(32), &"1".repeat(16)), None);
        assert!(parse_trace_id("zz").is_err());
        assert!(parse_trace_id(&"é".repeat(16)).is_err());
        assert_eq!(parse_trace_id(&link.trace_id_hex()).unwrap(), link.trace_id);
    }

    #[test]
    fn retain_trace_keeps_linked_samples_and_pprof_labels() {
        let mut b = ProfileBuilder::new(ProfileConfig::cpu(99, 1, 1));
        let cpu = b.default_profile_type();
        let r = b.resource(Vec::new());
        let (a, other) = ([1u8; 16], [2u8; 16]);
        let la = b.link(a, [3; 8]);
        let lo = b.link(other, [4; 8]);
        b.add_linked_sample(r, cpu, 0, &[], la, 5, None);
        b.add_linked_sample(r, cpu, 0, &[], lo, 7, None);
        b.add_sample(r, cpu, 0, &[], 11, None);
        // As read back from pprof: labels, no link.
        let t = b.attribute(TRACE_ID_LABEL, string_value(&hex(&a)), "");
        let s = b.attribute(SPAN_ID_LABEL, string_value(&hex(&[9; 8])), "");
        b.add_sample(r, cpu, 0, &[t, s], 13, None);
        let mut data = b.finish();
        crate::validate(&data).unwrap();
        assert_eq!(retain_trace(&mut data, a), 2);
        let values: Vec<i64> = data.resource_profiles[0].scope_profiles[0].profiles[0]
            .samples
            .iter()
            .map(|s| s.values[0])
            .collect();
        assert_eq!(values, [5, 13]);
    }

    #[test]
    fn links_survive_pprof_and_merge() {
        let mut b = ProfileBuilder::new(ProfileConfig::cpu(99, 1, 1));
        let cpu = b.default_profile_type();
        let r = b.resource(Vec::new());
        let f = b.location(&crate::LocationSpec {
            lines: vec![crate::SourceLine {
                function: "hot".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let stack = b.stack(&[f]);
        let link = TraceLink {
            trace_id: [7; 16],
            span_id: [8; 8],
        };
        let l = b.link(link.trace_id, link.span_id);
        b.add_linked_sample(r, cpu, stack, &[], l, 3, None);
        let data = b.finish();
        let pprof = crate::to_pprof(&data);
        let back = crate::from_pprof(&pprof).unwrap();
        let merged = crate::merge([&back, &data]);
        for d in [&back, &merged] {
            let view = ProfileView::new(d);
            let (_, p) = view.profiles().next().unwrap();
            assert!(p
                .samples
                .iter()
                .all(|s| sample_link(&view, s) == Some(link)));
            // The ids became the link, not attributes too.
            assert!(p.samples.iter().all(|s| s.attribute_indices.is_empty()));
        }
    }
}
