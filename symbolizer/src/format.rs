//! Text renderings of a [`Symbolized`] address for the CLI: the
//! `addr2line -f -i -C` layout and one JSON object per line.

use std::io::{self, Write};

use serde::Serialize;

use crate::{Frame, ModuleInfo, Symbolized};

/// Writes `sym` as `addr2line -f -i -C` does: for each frame, innermost first,
/// the function name and then `file:line`, with `??` for what is unknown.
pub fn format_addr2line(sym: &Symbolized, out: &mut impl Write) -> io::Result<()> {
    if sym.frames.is_empty() {
        return out.write_all(b"??\n??:0\n");
    }
    for frame in &sym.frames {
        writeln!(out, "{}", frame.function.as_deref().unwrap_or("??"))?;
        let file = frame.file.as_deref().unwrap_or("??");
        match frame.line {
            Some(line) if line != 0 => writeln!(out, "{file}:{line}")?,
            _ => writeln!(out, "{file}:?")?,
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct JsonLine<'a> {
    addr: String,
    frames: &'a [Frame],
    #[serde(skip_serializing_if = "Option::is_none")]
    module: Option<JsonModule<'a>>,
}

#[derive(Serialize)]
struct JsonModule<'a> {
    path: &'a str,
    build_id: Option<&'a str>,
    file_offset: String,
}

/// Writes `sym` as one JSON object and a newline:
/// `{"addr":"0x…","frames":[{"function":…,"file":…,"line":…,"inlined":bool}],"module":{…}}`.
pub fn format_json_line(sym: &Symbolized, out: &mut impl Write) -> io::Result<()> {
    let line = JsonLine {
        addr: format!("{:#x}", sym.addr),
        frames: &sym.frames,
        module: sym.module.as_ref().map(|m: &ModuleInfo| JsonModule {
            path: &m.path,
            build_id: m.build_id.as_deref(),
            file_offset: format!("{:#x}", m.file_offset),
        }),
    };
    serde_json::to_writer(&mut *out, &line).map_err(io::Error::other)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Symbolized {
        Symbolized {
            addr: 0x1234,
            frames: vec![
                Frame {
                    function: Some("inner".into()),
                    file: Some("/src/a.c".into()),
                    line: Some(7),
                    inlined: true,
                },
                Frame {
                    function: Some("outer".into()),
                    file: None,
                    line: None,
                    inlined: false,
                },
            ],
            module: Some(ModuleInfo {
                path: "/bin/a".into(),
                build_id: Some("abcd".into()),
                file_offset: 0x234,
            }),
        }
    }

    #[test]
    fn addr2line_layout() {
        let mut out = Vec::new();
        format_addr2line(&sample(), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "inner\n/src/a.c:7\nouter\n??:?\n"
        );
        let mut out = Vec::new();
        let empty = Symbolized {
            addr: 1,
            frames: vec![],
            module: None,
        };
        format_addr2line(&empty, &mut out).unwrap();
        assert_eq!(out, b"??\n??:0\n");
    }

    #[test]
    fn json_line() {
        let mut out = Vec::new();
        format_json_line(&sample(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["addr"], "0x1234");
        assert_eq!(v["frames"][0]["function"], "inner");
        assert_eq!(v["frames"][0]["line"], 7);
        assert_eq!(v["frames"][0]["inlined"], true);
        assert_eq!(v["frames"][1]["file"], serde_json::Value::Null);
        assert_eq!(v["module"]["build_id"], "abcd");
        assert_eq!(v["module"]["file_offset"], "0x234");
    }
}
