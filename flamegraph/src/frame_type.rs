//! What kind of code a frame is (native, kernel, inlined), read from the
//! inferno annotations `fold` adds, and how the SVG shows it: a colour
//! family per kind and a `class` attribute on the frame's `<g>`.

use std::collections::BTreeSet;

use inferno::flamegraph::color::{Color, PaletteMap};
use inferno::flamegraph::FuncFrameAttrsMap;

const KERNEL_SUFFIX: &str = "_[k]";
const INLINE_SUFFIX: &str = "_[i]";
/// Interpreted or JIT-compiled code (CPython, V8, …): `fold` marks every
/// frame whose type is a runtime's, not native or kernel.
const RUNTIME_SUFFIX: &str = "_[j]";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameKind {
    Native,
    Kernel,
    Inlined,
    /// A frame of a language runtime: Python, JavaScript, …
    Runtime,
}

impl FrameKind {
    pub(crate) fn of(frame: &str) -> FrameKind {
        if frame.ends_with(KERNEL_SUFFIX) {
            FrameKind::Kernel
        } else if frame.ends_with(INLINE_SUFFIX) {
            FrameKind::Inlined
        } else if frame.ends_with(RUNTIME_SUFFIX) {
            FrameKind::Runtime
        } else {
            FrameKind::Native
        }
    }

    /// A colour of this kind's family for `frame`, the same on every run.
    /// The families are those of inferno's `java` palette (native red,
    /// kernel orange, inlined aqua, runtime green), without its guessing of
    /// Java and C++ from the name; waiting time in blues.
    fn colour(self, frame: &str, waiting: bool) -> Color {
        let v = fnv1a(frame);
        // Three fractions in [0, 1] from different bits of one hash.
        let v1 = (v & 0xffff) as f32 / 65535.0;
        let v2 = ((v >> 16) & 0xffff) as f32 / 65535.0;
        let shade = |base: u8, range: f32, v: f32| base + (range * v) as u8;
        if waiting {
            // Time spent waiting (off-CPU) is drawn in blues, as off-CPU
            // flamegraphs are: native blue, kernel violet, inlined cyan.
            return match self {
                FrameKind::Native => Color {
                    r: shade(0, 60.0, v1),
                    g: shade(80, 80.0, v2),
                    b: shade(190, 65.0, v1),
                },
                FrameKind::Kernel => Color {
                    r: shade(110, 60.0, v1),
                    g: shade(90, 50.0, v1),
                    b: shade(200, 55.0, v2),
                },
                FrameKind::Inlined => Color {
                    r: shade(30, 40.0, v1),
                    g: shade(150, 40.0, v2),
                    b: shade(215, 40.0, v1),
                },
                FrameKind::Runtime => Color {
                    r: shade(60, 40.0, v1),
                    g: shade(120, 40.0, v2),
                    b: shade(220, 35.0, v1),
                },
            };
        }
        match self {
            FrameKind::Native => Color {
                r: shade(200, 55.0, v1),
                g: shade(50, 80.0, v2),
                b: shade(50, 80.0, v2),
            },
            FrameKind::Kernel => Color {
                r: shade(190, 65.0, v1),
                g: shade(90, 65.0, v1),
                b: 0,
            },
            FrameKind::Inlined => Color {
                r: shade(50, 60.0, v1),
                g: shade(165, 55.0, v1),
                b: shade(165, 55.0, v1),
            },
            FrameKind::Runtime => Color {
                r: shade(50, 60.0, v1),
                g: shade(200, 55.0, v1),
                b: shade(50, 60.0, v1),
            },
        }
    }

    fn class(self) -> Option<&'static str> {
        match self {
            FrameKind::Native => None,
            FrameKind::Kernel => Some("kernel"),
            FrameKind::Inlined => Some("inlined"),
            FrameKind::Runtime => Some("runtime"),
        }
    }
}

/// FNV-1a, as inferno's `deterministic` colouring uses: stable across runs
/// and machines.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Every distinct frame of `stacks` (folded, `;`-separated).
pub(crate) fn frames<'a>(stacks: impl Iterator<Item = &'a str>) -> BTreeSet<&'a str> {
    stacks.flat_map(|stack| stack.split(';')).collect()
}

/// The colour of every frame by its kind; in blues when the graph is of
/// waiting (off-CPU) time.
pub(crate) fn palette<'a>(frames: impl Iterator<Item = &'a str>, waiting: bool) -> PaletteMap {
    let mut map = PaletteMap::default();
    for frame in frames {
        map.insert(frame, FrameKind::of(frame).colour(frame, waiting));
    }
    map
}

/// `class="kernel"` / `class="inlined"` on the `<g>` of those frames.
/// Inferno takes these only as nameattr text: `name<TAB>class=VALUE` lines.
pub(crate) fn classes<'a>(frames: impl Iterator<Item = &'a str>) -> FuncFrameAttrsMap {
    let mut text = String::new();
    for frame in frames {
        if let Some(class) = FrameKind::of(frame).class() {
            // Names with tabs never get here (`stacks::sanitize`), so each
            // line parses back to this frame.
            text.push_str(frame);
            text.push_str("\tclass=");
            text.push_str(class);
            text.push('\n');
        }
    }
    // Reading from memory cannot fail; were it to, frames go unmarked.
    FuncFrameAttrsMap::from_reader(text.as_bytes()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_annotations() {
        assert_eq!(FrameKind::of("do_syscall_64_[k]"), FrameKind::Kernel);
        assert_eq!(FrameKind::of("memcpy_[i]"), FrameKind::Inlined);
        assert_eq!(FrameKind::of("Main.run"), FrameKind::Native);
        assert_eq!(FrameKind::of("<module>_[j]"), FrameKind::Runtime);
    }

    #[test]
    fn colours_stay_in_their_family_and_are_stable() {
        for name in [
            "a",
            "main",
            "std::io::Write::write_all",
            "Py_Main",
            "x.cold",
        ] {
            let native = FrameKind::Native.colour(name, false);
            assert!(
                native.r >= 200 && native.g == native.b,
                "{name}: {native:?}"
            );
            let kernel = FrameKind::Kernel.colour(name, false);
            assert!(
                kernel.b == 0 && kernel.r - kernel.g == 100,
                "{name}: {kernel:?}"
            );
            let inlined = FrameKind::Inlined.colour(name, false);
            assert!(
                inlined.g == inlined.b && inlined.r < inlined.g,
                "{name}: {inlined:?}"
            );
            assert_eq!(FrameKind::Native.colour(name, false), native);
            let runtime = FrameKind::Runtime.colour(name, false);
            assert!(
                runtime.r == runtime.b && runtime.g >= 200,
                "{name}: {runtime:?}"
            );
            // Waiting time: every kind in blues, blue above red and green.
            for kind in [
                FrameKind::Native,
                FrameKind::Kernel,
                FrameKind::Inlined,
                FrameKind::Runtime,
            ] {
                let c = kind.colour(name, true);
                assert!(c.b > c.r && c.b > c.g, "{name} {kind:?}: {c:?}");
                assert_eq!(kind.colour(name, true), c);
            }
        }
    }
}
