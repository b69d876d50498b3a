#!/usr/bin/env python3
"""Decode an OTLP profiles file with the official opentelemetry-proto
package and check the profiles/v1development invariants from Python.

usage: otlp_check.py FILE --as data|request|json [--gzip] [--functions F,G]
Prints one JSON object: resources, samples, total weight, function names
of leaf frames with their weights. Exits 1 with a message on any violation.
"""
import argparse
import gzip
import json
import sys

from google.protobuf import json_format
from google.protobuf.unknown_fields import UnknownFieldSet
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2
from opentelemetry.proto.profiles.v1development import profiles_pb2


def fail(msg):
    print(f"invariant violated: {msg}", file=sys.stderr)
    sys.exit(1)


def check_no_unknown_fields(msg, path):
    if len(UnknownFieldSet(msg)) != 0:
        fail(f"{path} has fields the official schema does not know")
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            for i, item in enumerate(value):
                check_no_unknown_fields(item, f"{path}.{field.name}[{i}]")
        else:
            check_no_unknown_fields(value, f"{path}.{field.name}")


def check_zero(table, name, zero):
    if len(table) == 0:
        fail(f"{name} is empty")
    if table[0] != zero:
        fail(f"{name}[0] is not the zero value: {table[0]!r}")


def in_range(index, table, what):
    if index < 0 or index >= len(table):
        fail(f"{what} = {index} out of range (table has {len(table)})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--as", dest="kind", choices=["data", "request", "json"], required=True)
    # For each of these functions: the weight of the samples whose stack
    # holds it, per link ("TRACE_ID/SPAN_ID" in hex, "" for none).
    ap.add_argument("--functions", default="")
    args = ap.parse_args()
    raw = open(args.file, "rb").read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if args.kind == "data":
        msg = profiles_pb2.ProfilesData()
        msg.ParseFromString(raw)
    elif args.kind == "request":
        msg = profiles_service_pb2.ExportProfilesServiceRequest()
        msg.ParseFromString(raw)
    else:
        msg = json_format.Parse(raw.decode("utf-8"), profiles_pb2.ProfilesData())
    # The parsers above tolerate unknown fields; make sure nothing was unknown.
    check_no_unknown_fields(msg, type(msg).__name__)

    d = msg.dictionary
    check_zero(d.mapping_table, "mapping_table", profiles_pb2.Mapping())
    check_zero(d.location_table, "location_table", profiles_pb2.Location())
    check_zero(d.function_table, "function_table", profiles_pb2.Function())
    check_zero(d.link_table, "link_table", profiles_pb2.Link())
    check_zero(d.string_table, "string_table", "")
    check_zero(d.attribute_table, "attribute_table", profiles_pb2.KeyValueAndUnit())
    check_zero(d.stack_table, "stack_table", profiles_pb2.Stack())
    S = d.string_table
    for i, a in enumerate(d.attribute_table):
        in_range(a.key_strindex, S, f"attribute_table[{i}].key_strindex")
        in_range(a.unit_strindex, S, f"attribute_table[{i}].unit_strindex")
    for i, m in enumerate(d.mapping_table):
        in_range(m.filename_strindex, S, f"mapping_table[{i}].filename_strindex")
        for j in m.attribute_indices:
            in_range(j, d.attribute_table, f"mapping_table[{i}].attribute_indices")
    for i, f in enumerate(d.function_table):
        for field in ("name_strindex", "system_name_strindex", "filename_strindex"):
            in_range(getattr(f, field), S, f"function_table[{i}].{field}")
    for i, loc in enumerate(d.location_table):
        in_range(loc.mapping_index, d.mapping_table, f"location_table[{i}].mapping_index")
        for line in loc.lines:
            in_range(line.function_index, d.function_table, f"location_table[{i}].lines.function_index")
        for j in loc.attribute_indices:
            in_range(j, d.attribute_table, f"location_table[{i}].attribute_indices")
    for i, st in enumerate(d.stack_table):
        for j in st.location_indices:
            in_range(j, d.location_table, f"stack_table[{i}].location_indices")

    samples = 0
    total = 0
    leaves = {}
    wanted = [f for f in args.functions.split(",") if f]
    links_by_function = {f: {} for f in wanted}
    for i, link in enumerate(d.link_table):
        if i > 0 and (len(link.trace_id) != 16 or len(link.span_id) != 8):
            fail(f"link_table[{i}] has a {len(link.trace_id)}-byte trace_id, {len(link.span_id)}-byte span_id")
    # Per sample type ("type/unit"): total weight, the period type, and the
    # weight of every function anywhere in a stack (once per sample).
    by_sample_type = {}
    resources = []
    for rp in msg.resource_profiles:
        attrs = {kv.key: json_format.MessageToDict(kv.value) for kv in rp.resource.attributes}
        resources.append(attrs)
        for sp in rp.scope_profiles:
            for p in sp.profiles:
                in_range(p.sample_type.type_strindex, S, "sample_type.type_strindex")
                in_range(p.period_type.type_strindex, S, "period_type.type_strindex")
                in_range(p.sample_type.unit_strindex, S, "sample_type.unit_strindex")
                in_range(p.period_type.unit_strindex, S, "period_type.unit_strindex")
                type_name = f"{S[p.sample_type.type_strindex]}/{S[p.sample_type.unit_strindex]}"
                of_type = by_sample_type.setdefault(type_name, {
                    "total": 0,
                    "functions": {},
                    "period_type": f"{S[p.period_type.type_strindex]}/{S[p.period_type.unit_strindex]}",
                })
                if p.time_unix_nano == 0 and p.duration_nano == 0 and p.period == 0:
                    pass  # profiles from text inputs carry no time
                for s in p.samples:
                    samples += 1
                    in_range(s.stack_index, d.stack_table, "sample.stack_index")
                    in_range(s.link_index, d.link_table, "sample.link_index")
                    for j in s.attribute_indices:
                        in_range(j, d.attribute_table, "sample.attribute_indices")
                    if not s.values and not s.timestamps_unix_nano:
                        fail("sample with neither values nor timestamps")
                    if s.values and s.timestamps_unix_nano and len(s.values) != len(s.timestamps_unix_nano):
                        fail("values and timestamps differ in length")
                    weight = sum(s.values) if s.values else len(s.timestamps_unix_nano)
                    total += weight
                    locs = d.stack_table[s.stack_index].location_indices
                    names = {S[d.function_table[line.function_index].name_strindex]
                             for li in locs for line in d.location_table[li].lines}
                    if wanted:
                        link = d.link_table[s.link_index]
                        key = f"{link.trace_id.hex()}/{link.span_id.hex()}" if s.link_index else ""
                        for f in wanted:
                            if any(n.endswith(f) for n in names):
                                links_by_function[f][key] = links_by_function[f].get(key, 0) + weight
                    of_type["total"] += weight
                    for name in names:
                        of_type["functions"][name] = of_type["functions"].get(name, 0) + weight
                    if locs:
                        loc = d.location_table[locs[0]]
                        if loc.lines:
                            name = S[d.function_table[loc.lines[0].function_index].name_strindex]
                            leaves[name] = leaves.get(name, 0) + weight
    print(json.dumps({
        "resources": resources,
        "samples": samples,
        "total": total,
        "leaves": leaves,
        "links": len(d.link_table) - 1,
        "links_by_function": links_by_function,
        "by_sample_type": by_sample_type,
        "strings": len(S),
    }, sort_keys=True))


if __name__ == "__main__":
    main()
