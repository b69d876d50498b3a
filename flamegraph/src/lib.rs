//! Flamegraphs of smolder profiles: an OTLP `ProfilesData` is folded into
//! stacks ([`smolder_profiles_proto::fold`]) and drawn as an interactive
//! SVG by [inferno](https://docs.rs/inferno).
//!
//! [`render`] draws one profile; [`render_diff`] draws how a profile
//! changed (red grew, blue shrank), like inferno's `difffolded` followed
//! by `flamegraph`. [`FlamegraphOptions`] chooses the roots (per process,
//! per thread), which frames to keep (kernel, inlined), the orientation
//! and the colours. Frames are coloured by kind: native red, kernel orange,
//! inlined aqua and runtime (Python, JavaScript, …) green, with
//! `class="kernel"` / `class="inlined"` / `class="runtime"` on their SVG
//! group; a graph of waiting time (sample type [`OFF_CPU_SAMPLE_TYPE`]) is
//! drawn in blues instead. Colours depend only on the frame name, so the
//! same profile always gives the same SVG.
//!
//! ```
//! use smolder_flamegraph::{render, FlamegraphOptions};
//!
//! let profile = smolder_profiles_proto::read_folded("main;work 3\n").unwrap();
//! let mut svg = Vec::new();
//! let summary = render(&profile, &FlamegraphOptions::default(), &mut svg).unwrap();
//! assert_eq!((summary.stacks, summary.samples), (1, 3));
//! let svg = String::from_utf8(svg).unwrap();
//! assert!(svg.contains("<title>work (3 samples, 100.00%)</title>"));
//! ```

mod error;
mod frame_type;
mod stacks;

use std::fmt;
use std::io::Write;

use inferno::flamegraph::color::{BasicPalette, Palette, PaletteMap};
use inferno::flamegraph::{from_lines, Direction, Options};
use smolder_profiles_proto::otlp::profiles::v1development::ProfilesData;
use smolder_profiles_proto::{fold, FoldOptions, FoldedStacks, ProfileView};

pub use error::Error;

/// The sample type of off-CPU profiles (time spent waiting), drawn in blues.
pub const OFF_CPU_SAMPLE_TYPE: &str = "off_cpu";

use stacks::{xml_text, DiffStacks, Stacks};

/// How a flamegraph is drawn. `Default` gives inferno's defaults with
/// smolder's title, every frame kept and frames coloured by kind.
#[derive(Clone, Debug, PartialEq)]
pub struct FlamegraphOptions {
    /// The title at the top of the graph.
    pub title: String,
    /// A smaller line under the title.
    pub subtitle: Option<String>,
    /// A root frame per process: `name [pid]`.
    pub process_roots: bool,
    /// A frame per thread (under its process with `process_roots`): `name [tid]`.
    pub thread_roots: bool,
    /// Draw kernel frames.
    pub kernel_frames: bool,
    /// Draw inlined functions as frames of their own (coloured and classed
    /// `inlined`); otherwise only the function they were inlined into.
    pub inlined_frames: bool,
    /// An icicle graph: roots at the top, stacks growing down.
    pub icicle: bool,
    /// Colour frames by kind (native red, kernel orange, inlined aqua,
    /// runtime green);
    /// otherwise inferno's `hot` palette. Differential graphs are always
    /// coloured by change.
    pub color_by_frame_type: bool,
    /// What the counts are, as the frame tooltips say: `main (3 samples, 100%)`.
    /// `None` names them after the unit of the profile's sample type:
    /// `samples` for counts, `ns` for nanoseconds (e.g. `perf script` input
    /// weighed by cpu-clock periods), else the unit itself.
    pub count_name: Option<String>,
    /// Frames narrower than this percentage of the width are left out.
    pub min_width: f64,
    /// Draw only profiles of this sample type (`type/unit` or `type`);
    /// `None` takes the type of the first profile.
    pub sample_type: Option<String>,
    /// Differential only: scale the counts of `before` so that its total is
    /// the total of `after` (`difffolded -n`), to compare shares rather than
    /// counts.
    pub normalize: bool,
    /// Differential only: which profile gives the frames their widths.
    pub diff_widths: DiffWidths,
}

impl Default for FlamegraphOptions {
    fn default() -> Self {
        FlamegraphOptions {
            title: "smolder".to_owned(),
            subtitle: None,
            process_roots: false,
            thread_roots: false,
            kernel_frames: true,
            inlined_frames: true,
            icicle: false,
            color_by_frame_type: true,
            count_name: None,
            min_width: 0.1,
            sample_type: None,
            normalize: false,
            diff_widths: DiffWidths::After,
        }
    }
}

impl FlamegraphOptions {
    /// How the profile is folded for this graph. `write_folded` with these
    /// options gives the text inferno's own `flamegraph` would draw the same.
    pub fn fold_options(&self) -> FoldOptions {
        FoldOptions {
            process_roots: self.process_roots,
            thread_roots: self.thread_roots,
            kernel_frames: self.kernel_frames,
            inlined_frames: self.inlined_frames,
            // Colours and classes are read from the annotations; inferno
            // strips them from the names it shows.
            annotate: true,
            sample_type: self.sample_type.clone(),
        }
    }

    /// The count name to draw `data` with: the one given, or one derived
    /// from the unit of the sample type drawn.
    pub fn count_name_for(&self, data: &ProfilesData) -> String {
        let unit = self.drawn_sample_type(data).map(|(_, unit)| unit);
        self.count_name_for_unit(unit.as_deref())
    }

    /// The count name for values in `unit`: the one given, or one derived
    /// from the unit.
    pub fn count_name_for_unit(&self, unit: Option<&str>) -> String {
        if let Some(name) = &self.count_name {
            return name.clone();
        }
        match unit {
            None | Some("") | Some("count") => "samples".to_owned(),
            Some("nanoseconds") => "ns".to_owned(),
            Some(other) => other.to_owned(),
        }
    }

    /// The sample type (type, unit) of the profiles drawn from `data`.
    pub fn drawn_sample_type(&self, data: &ProfilesData) -> Option<(String, String)> {
        let view = ProfileView::new(data);
        let found = view
            .profiles()
            .map(|(_, p)| view.value_type(p.sample_type.as_ref()))
            .find(|(t, u)| {
                self.sample_type
                    .as_ref()
                    .is_none_or(|want| want == t || *want == format!("{t}/{u}"))
            });
        found
    }

    fn inferno<'a>(
        &self,
        count_name: &str,
        waiting: bool,
        palette: Option<&'a mut PaletteMap>,
    ) -> Options<'a> {
        let mut options = Options::default();
        options.title = xml_text(&self.title);
        options.subtitle = self.subtitle.as_deref().map(xml_text);
        options.count_name = xml_text(count_name);
        options.min_width = self.min_width;
        options.direction = if self.icicle {
            Direction::Inverted
        } else {
            Direction::Straight
        };
        options.colors = Palette::Basic(if waiting {
            BasicPalette::Io
        } else {
            BasicPalette::Hot
        });
        options.deterministic = true;
        options.palette_map = palette;
        // `stacks` sorts by stack; inferno's own sort is by line, which
        // disagrees with its sortedness check for some names.
        options.no_sort = true;
        options
    }
}

/// Which profile of a differential graph gives the frames their widths.
/// Either way red means the frame grew from `before` to `after`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiffWidths {
    /// Frames as wide as in `after`; what disappeared is not drawn.
    #[default]
    After,
    /// Frames as wide as in `before`; what is new is not drawn
    /// (`flamegraph --negate` on swapped columns).
    Before,
}

impl fmt::Display for DiffWidths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiffWidths::After => "after",
            DiffWidths::Before => "before",
        })
    }
}

/// What [`render`] drew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderSummary {
    /// Distinct stacks.
    pub stacks: usize,
    /// Their total count.
    pub samples: u64,
    /// Stacks left out because their count was negative (flamegraphs draw
    /// only positive counts; `render_diff` draws decreases).
    pub negative_stacks: usize,
    /// What the counts are (`samples`, `ns`, …).
    pub count_name: String,
}

impl fmt::Display for RenderSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} stacks, {} {}",
            self.stacks, self.samples, self.count_name
        )?;
        if self.negative_stacks > 0 {
            write!(
                f,
                " ({} stacks with negative counts left out)",
                self.negative_stacks
            )?;
        }
        Ok(())
    }
}

/// What [`render_diff`] drew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffSummary {
    /// Distinct stacks of both profiles.
    pub stacks: usize,
    /// Total count of `before`, after normalisation when asked for.
    pub before_samples: u64,
    /// Total count of `after`.
    pub after_samples: u64,
    /// Stacks of either profile left out because their count was negative.
    pub negative_stacks: usize,
    /// What the counts are (`samples`, `ns`, …).
    pub count_name: String,
}

impl fmt::Display for DiffSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} stacks, {} -> {} {}",
            self.stacks, self.before_samples, self.after_samples, self.count_name
        )?;
        if self.negative_stacks > 0 {
            write!(
                f,
                " ({} stacks with negative counts left out)",
                self.negative_stacks
            )?;
        }
        Ok(())
    }
}

/// Draws `data` as an SVG flamegraph into `out`.
///
/// A profile without samples to draw is [`Error::NoSamples`], and nothing
/// is written.
pub fn render(
    data: &ProfilesData,
    options: &FlamegraphOptions,
    out: impl Write,
) -> Result<RenderSummary, Error> {
    let count_name = options.count_name_for(data);
    // Off-CPU time is waiting time: drawn in blues.
    let waiting = options
        .drawn_sample_type(data)
        .is_some_and(|(t, _)| t == OFF_CPU_SAMPLE_TYPE);
    draw(
        fold(data, &options.fold_options()),
        count_name,
        waiting,
        options,
        out,
    )
}

/// Draws folded stacks (as [`FlamegraphOptions::fold_options`] fold them,
/// e.g. from [`smolder_profiles_proto::read_stacks_from`]) as an SVG
/// flamegraph into `out`: what [`render`] draws of the profile they were
/// folded from.
///
/// ```
/// use smolder_flamegraph::{render_stacks, FlamegraphOptions};
/// use smolder_profiles_proto::{read_stacks_from, ReadOptions};
///
/// let options = FlamegraphOptions::default();
/// let text = "prog 7/7 [000] 1.0: 1000 cpu-clock: \n\t 1 work (/bin/prog)\n\t 2 main (/bin/prog)\n\n";
/// let read = read_stacks_from(text.as_bytes(), &ReadOptions::default(), &options.fold_options()).unwrap();
/// let mut svg = Vec::new();
/// let summary = render_stacks(read.stacks, &options, &mut svg).unwrap();
/// assert_eq!(summary.to_string(), "1 stacks, 1000 ns");
/// ```
pub fn render_stacks(
    stacks: FoldedStacks,
    options: &FlamegraphOptions,
    out: impl Write,
) -> Result<RenderSummary, Error> {
    let count_name = options.count_name_for_unit(Some(&stacks.value_type.1));
    let waiting = stacks.value_type.0 == OFF_CPU_SAMPLE_TYPE;
    draw(stacks.stacks, count_name, waiting, options, out)
}

/// `waiting`: the stacks are off-CPU time, drawn in blues.
fn draw(
    folded: Vec<(String, i64)>,
    count_name: String,
    waiting: bool,
    options: &FlamegraphOptions,
    out: impl Write,
) -> Result<RenderSummary, Error> {
    let stacks = Stacks::new(folded)?;
    if stacks.total == 0 {
        return Err(Error::NoSamples);
    }
    let (mut palette, classes) = {
        let frames = frame_type::frames(stacks.counts.keys().map(String::as_str));
        (
            options
                .color_by_frame_type
                .then(|| frame_type::palette(frames.iter().copied(), waiting)),
            frame_type::classes(frames.iter().copied()),
        )
    };
    let mut inferno = options.inferno(&count_name, waiting, palette.as_mut());
    inferno.func_frameattrs = classes;
    let summary = RenderSummary {
        stacks: stacks.counts.len(),
        samples: stacks.total,
        negative_stacks: stacks.negative,
        count_name,
    };
    // The stacks become the lines: one copy of the text, not two.
    let lines = stacks.into_lines();
    from_lines(&mut inferno, lines.iter().map(String::as_str), out).map_err(Error::Write)?;
    Ok(summary)
}

/// Draws how `after` differs from `before` as a differential flamegraph:
/// frames as wide as in one profile ([`FlamegraphOptions::diff_widths`]),
/// red where a frame's own count grew, blue where it shrank, and each
/// tooltip with the change as a share of the total.
///
/// Both profiles are folded with the same options. When the profile that
/// gives the widths has no samples to draw, that is an error
/// ([`Error::EmptyWidths`], or [`Error::NoSamples`] when both are empty),
/// and nothing is written.
pub fn render_diff(
    before: &ProfilesData,
    after: &ProfilesData,
    options: &FlamegraphOptions,
    out: impl Write,
) -> Result<DiffSummary, Error> {
    let count_name = options.count_name_for(after);
    let fold_options = options.fold_options();
    let before = Stacks::new(fold(before, &fold_options))?;
    let after = Stacks::new(fold(after, &fold_options))?;
    if before.total == 0 && after.total == 0 {
        return Err(Error::NoSamples);
    }
    let diff = DiffStacks::new(&before, &after, options.normalize);
    let (before_total, after_total) = diff.totals();
    let from_before = options.diff_widths == DiffWidths::Before;
    let width_total = if from_before {
        before_total
    } else {
        after_total
    };
    if width_total == 0 {
        return Err(Error::EmptyWidths(options.diff_widths));
    }
    let frames = frame_type::frames(diff.counts.keys().map(String::as_str));
    let mut inferno = options.inferno(&count_name, false, None);
    inferno.func_frameattrs = frame_type::classes(frames.iter().copied());
    // Inferno colours by `last count - first count`; with the columns
    // swapped, negating keeps red meaning "grew".
    inferno.negate_differentials = from_before;
    let lines = diff.lines(from_before);
    from_lines(&mut inferno, lines.iter().map(String::as_str), out).map_err(Error::Write)?;
    Ok(DiffSummary {
        stacks: diff.counts.len(),
        before_samples: before_total,
        after_samples: after_total,
        negative_stacks: before.negative + after.negative,
        count_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use smolder_profiles_proto::{read_folded, read_perf_script};

    /// A drawn frame: tooltip, fill and `class` of its `<g>`, top edge.
    #[derive(Debug)]
    struct Frame {
        title: String,
        fill: String,
        class: Option<String>,
        y: f64,
    }

    /// Parses the SVG (so it must be well-formed XML) and returns its frames.
    fn frames(svg: &[u8]) -> Vec<Frame> {
        let text = std::str::from_utf8(svg).expect("SVG is UTF-8");
        let options = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        let doc = roxmltree::Document::parse_with_options(text, options)
            .unwrap_or_else(|e| panic!("SVG is not well-formed XML: {e}\n{text}"));
        let container = doc
            .descendants()
            .find(|n| n.attribute("id") == Some("frames"))
            .expect("frames container");
        container
            .children()
            .filter(|n| n.has_tag_name("g"))
            .map(|g| {
                let child = |tag: &str| g.children().find(|n| n.has_tag_name(tag));
                let rect = child("rect").expect("frame rect");
                Frame {
                    title: child("title").and_then(|t| t.text()).unwrap_or("").into(),
                    fill: rect.attribute("fill").unwrap_or("").into(),
                    class: g.attribute("class").map(str::to_owned),
                    y: rect.attribute("y").and_then(|y| y.parse().ok()).unwrap(),
                }
            })
            .collect()
    }

    fn total_samples(svg: &[u8]) -> u64 {
        let text = std::str::from_utf8(svg).unwrap();
        let at = text.find("total_samples=\"").unwrap() + "total_samples=\"".len();
        text[at..].split('"').next().unwrap().parse().unwrap()
    }

    /// The frame whose tooltip names `name`.
    fn frame<'a>(frames: &'a [Frame], name: &str) -> &'a Frame {
        let prefix = format!("{name} (");
        frames
            .iter()
            .find(|f| f.title.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no frame {name:?} in {frames:#?}"))
    }

    fn has_frame(frames: &[Frame], name: &str) -> bool {
        let prefix = format!("{name} (");
        frames.iter().any(|f| f.title.starts_with(&prefix))
    }

    fn rgb(fill: &str) -> (u8, u8, u8) {
        let inner = fill
            .strip_prefix("rgb(")
            .and_then(|f| f.strip_suffix(')'))
            .unwrap_or_else(|| panic!("fill {fill:?}"));
        let v: Vec<u8> = inner.split(',').map(|c| c.parse().unwrap()).collect();
        (v[0], v[1], v[2])
    }

    fn draw(folded: &str, options: &FlamegraphOptions) -> (RenderSummary, Vec<u8>) {
        let data = read_folded(folded).unwrap();
        let mut svg = Vec::new();
        let summary = render(&data, options, &mut svg).unwrap();
        (summary, svg)
    }

    fn draw_diff(before: &str, after: &str, options: &FlamegraphOptions) -> Vec<u8> {
        let (before, after) = (read_folded(before).unwrap(), read_folded(after).unwrap());
        let mut svg = Vec::new();
        render_diff(&before, &after, options, &mut svg).unwrap();
        svg
    }

    const MIXED: &str = "main;read;sys_read_[k];vfs_read_[k] 7\nmain;work;inl_[i] 3\nmain;work 2\n";

    const SCRIPT: &str = "\
prog 1234/1234 [000] 100.000001: 10101010 cpu-clock:ppp: 
\t    55555555a000 hot_leaf+0x10 (/tmp/prog)
\t    55555555b000 main+0x20 (/tmp/prog)
\tffffffff81000000 do_syscall_64+0x5 ([kernel.kallsyms])

worker 1234/1240 [001] 100.000002: 10101010 cpu-clock:ppp: 
\t    55555555a000 hot_leaf+0x10 (/tmp/prog)
\t    55555555c000 thread_start+0x20 (/tmp/prog)

";

    #[test]
    fn frames_of_the_input_are_titles_of_a_well_formed_svg() {
        let (summary, svg) = draw(MIXED, &FlamegraphOptions::default());
        assert_eq!((summary.stacks, summary.samples), (3, 12));
        assert_eq!(summary.to_string(), "3 stacks, 12 samples");
        let frames = frames(&svg);
        assert_eq!(frame(&frames, "main").title, "main (12 samples, 100.00%)");
        for name in ["read", "sys_read", "vfs_read", "work", "inl"] {
            frame(&frames, name);
        }
        assert_eq!(frame(&frames, "work").title, "work (5 samples, 41.67%)");
        assert_eq!(total_samples(&svg), 12);
        let text = String::from_utf8(svg).unwrap();
        assert!(text.contains(">smolder</text>"), "title");
        assert!(
            !text.contains("_[k]") && !text.contains("_[i]"),
            "annotations shown"
        );
    }

    #[test]
    fn empty_profiles_are_an_error_and_write_nothing() {
        let data = smolder_profiles_proto::ProfileBuilder::new(
            smolder_profiles_proto::ProfileConfig::cpu(99, 0, 0),
        )
        .finish();
        let mut svg = Vec::new();
        let err = render(&data, &FlamegraphOptions::default(), &mut svg).unwrap_err();
        assert!(matches!(err, Error::NoSamples), "{err}");
        assert!(svg.is_empty());

        let data = read_folded("main;work 3\n").unwrap();
        let options = FlamegraphOptions {
            sample_type: Some("alloc_space/bytes".into()),
            ..FlamegraphOptions::default()
        };
        let err = render(&data, &options, &mut svg).unwrap_err();
        assert!(matches!(err, Error::NoSamples), "{err}");
        assert!(err.to_string().contains("sample type"), "{err}");
        assert!(svg.is_empty());
    }

    #[test]
    fn kernel_frames_are_hidden_when_off() {
        let options = FlamegraphOptions {
            kernel_frames: false,
            ..FlamegraphOptions::default()
        };
        let (summary, svg) = draw(MIXED, &options);
        assert_eq!(summary.samples, 12);
        let frames = frames(&svg);
        assert!(!has_frame(&frames, "sys_read") && !has_frame(&frames, "vfs_read"));
        assert_eq!(frame(&frames, "read").title, "read (7 samples, 58.33%)");
        assert!(frames.iter().all(|f| f.class.as_deref() != Some("kernel")));
    }

    #[test]
    fn process_and_thread_roots_appear_when_asked() {
        let data = read_perf_script(SCRIPT.as_bytes()).unwrap();
        let draw = |options: &FlamegraphOptions| {
            let mut svg = Vec::new();
            render(&data, options, &mut svg).unwrap();
            frames(&svg)
        };
        let plain = draw(&FlamegraphOptions::default());
        assert!(!plain.iter().any(|f| f.title.contains("[1234]")));
        assert!(frame(&plain, "thread_start")
            .title
            .ends_with(" ns, 50.00%)"));

        let per_process = draw(&FlamegraphOptions {
            process_roots: true,
            ..FlamegraphOptions::default()
        });
        assert!(frame(&per_process, "prog [1234]")
            .title
            .ends_with(" ns, 100.00%)"));
        assert!(!has_frame(&per_process, "worker [1240]"));

        let per_thread = draw(&FlamegraphOptions {
            process_roots: true,
            thread_roots: true,
            ..FlamegraphOptions::default()
        });
        let worker = frame(&per_thread, "worker [1240]");
        assert!(worker.title.ends_with(" ns, 50.00%)"), "{}", worker.title);
        // `prog [1234]` twice: the process, and above it its main thread,
        // level with the worker thread.
        let prog: Vec<f64> = per_thread
            .iter()
            .filter(|f| f.title.starts_with("prog [1234] ("))
            .map(|f| f.y)
            .collect();
        assert_eq!(prog.len(), 2, "{per_thread:#?}");
        let (process, main_thread) = (prog[0].max(prog[1]), prog[0].min(prog[1]));
        assert!(worker.y < process && worker.y == main_thread);
        let kernel = frame(&per_thread, "do_syscall_64");
        assert_eq!(kernel.class.as_deref(), Some("kernel"));
    }

    #[test]
    fn inlined_frames_are_marked_and_can_be_folded_away() {
        let (_, svg) = draw(MIXED, &FlamegraphOptions::default());
        let frames = frames(&svg);
        let inlined = frame(&frames, "inl");
        assert_eq!(inlined.class.as_deref(), Some("inlined"));
        let (r, g, b) = rgb(&inlined.fill);
        assert!(g == b && r < g, "inlined frames are aqua: {}", inlined.fill);
        assert_eq!(frame(&frames, "work").class, None);

        let options = FlamegraphOptions {
            inlined_frames: false,
            ..FlamegraphOptions::default()
        };
        let (summary, svg) = draw(MIXED, &options);
        let frames = self::frames(&svg);
        assert!(!has_frame(&frames, "inl"));
        assert_eq!(frame(&frames, "work").title, "work (5 samples, 41.67%)");
        assert_eq!(summary.stacks, 2, "work;inl merged into work");
    }

    #[test]
    fn icicle_puts_the_root_on_top() {
        let (_, flame) = draw(MIXED, &FlamegraphOptions::default());
        let icicle_options = FlamegraphOptions {
            icicle: true,
            ..FlamegraphOptions::default()
        };
        let (_, icicle) = draw(MIXED, &icicle_options);
        let (flame, icicle) = (frames(&flame), frames(&icicle));
        let depth_order = |frames: &[Frame]| {
            let (root, main, leaf) = (
                frame(frames, "all"),
                frame(frames, "main"),
                frame(frames, "vfs_read"),
            );
            (root.y, main.y, leaf.y)
        };
        let (root, main, leaf) = depth_order(&flame);
        assert!(
            root > main && main > leaf,
            "flame grows up: {root} {main} {leaf}"
        );
        let (root, main, leaf) = depth_order(&icicle);
        assert!(
            root < main && main < leaf,
            "icicle grows down: {root} {main} {leaf}"
        );
    }

    #[test]
    fn frames_are_coloured_by_kind() {
        let (_, svg) = draw(MIXED, &FlamegraphOptions::default());
        let frames = frames(&svg);
        for name in ["sys_read", "vfs_read"] {
            let kernel = frame(&frames, name);
            let (r, g, b) = rgb(&kernel.fill);
            assert!(b == 0 && r - g == 100, "{name} is orange: {}", kernel.fill);
            assert_eq!(kernel.class.as_deref(), Some("kernel"));
        }
        for name in ["main", "read", "work"] {
            let native = frame(&frames, name);
            let (r, g, b) = rgb(&native.fill);
            assert!(r >= 200 && g == b, "{name} is red: {}", native.fill);
        }
        assert_ne!(frame(&frames, "sys_read").fill, frame(&frames, "read").fill);

        let options = FlamegraphOptions {
            color_by_frame_type: false,
            ..FlamegraphOptions::default()
        };
        let (_, plain) = draw(MIXED, &options);
        let plain = self::frames(&plain);
        assert_ne!(
            frame(&plain, "sys_read").fill,
            frame(&frames, "sys_read").fill
        );
        // Classes mark the kind whatever the colours.
        assert_eq!(frame(&plain, "sys_read").class.as_deref(), Some("kernel"));
    }

    /// One resource with a CPU profile (`work`) and an off-CPU one
    /// (`wait` under a kernel frame), sharing one dictionary.
    fn cpu_and_off_cpu() -> ProfilesData {
        use smolder_profiles_proto::{
            FrameType, LocationSpec, ProfileBuilder, ProfileConfig, SourceLine,
        };
        let mut b = ProfileBuilder::new(ProfileConfig::cpu(99, 1, 1_000_000_000));
        let cpu = b.default_profile_type();
        let off = b.add_profile_type(ProfileConfig::off_cpu(1, 1_000_000_000));
        let resource = b.resource(Vec::new());
        let frame = |b: &mut ProfileBuilder, name: &str, frame_type| {
            b.location(&LocationSpec {
                lines: vec![SourceLine::function(name)],
                frame_type,
                ..LocationSpec::default()
            })
        };
        let (main, work, wait) = (
            frame(&mut b, "main", FrameType::Native),
            frame(&mut b, "work", FrameType::Native),
            frame(&mut b, "wait", FrameType::Native),
        );
        let schedule = frame(&mut b, "do_nanosleep", FrameType::Kernel);
        let on = b.stack(&[work, main]);
        let blocked = b.stack(&[schedule, wait, main]);
        b.add_sample(resource, cpu, on, &[], 1, Some(5));
        b.add_sample(resource, off, blocked, &[], 60_000_000, Some(6));
        b.finish()
    }

    #[test]
    fn off_cpu_time_is_its_own_graph_in_blues() {
        let data = cpu_and_off_cpu();
        let draw_type = |sample_type: &str| {
            let options = FlamegraphOptions {
                sample_type: Some(sample_type.into()),
                ..FlamegraphOptions::default()
            };
            let mut svg = Vec::new();
            let summary = render(&data, &options, &mut svg).unwrap();
            (summary, frames(&svg))
        };
        let (summary, off) = draw_type(OFF_CPU_SAMPLE_TYPE);
        assert_eq!(
            (summary.samples, summary.count_name.as_str()),
            (60_000_000, "ns")
        );
        assert!(!has_frame(&off, "work"), "a CPU frame in the off-CPU graph");
        for name in ["wait", "main", "do_nanosleep"] {
            let (r, g, b) = rgb(&frame(&off, name).fill);
            assert!(b > r && b > g, "{name} is blue: {r},{g},{b}");
        }
        assert_eq!(frame(&off, "do_nanosleep").class.as_deref(), Some("kernel"));

        let (summary, on) = draw_type("samples");
        assert_eq!(
            (summary.samples, summary.count_name.as_str()),
            (1, "samples")
        );
        assert!(!has_frame(&on, "wait"), "an off-CPU frame in the CPU graph");
        let (r, g, b) = rgb(&frame(&on, "work").fill);
        assert!(r >= 200 && g == b, "work is red: {r},{g},{b}");
    }

    #[test]
    fn output_is_deterministic() {
        let (_, first) = draw(MIXED, &FlamegraphOptions::default());
        let (_, second) = draw(MIXED, &FlamegraphOptions::default());
        assert_eq!(first, second);
        let plain = FlamegraphOptions {
            color_by_frame_type: false,
            ..FlamegraphOptions::default()
        };
        assert_eq!(draw(MIXED, &plain).1, draw(MIXED, &plain).1);
    }

    #[test]
    fn awkward_names_keep_the_svg_well_formed_and_every_sample() {
        let folded =
            "# hash;x 1\nmain;retry 12 5\nmain;a\tb 2\nmain;c\u{1}tl\u{FFFF} 3\n#;y 4\n# 6\n";
        let options = FlamegraphOptions {
            title: "t\u{7}itle <&>".into(),
            subtitle: Some("sub\u{0}".into()),
            ..FlamegraphOptions::default()
        };
        let (summary, svg) = draw(folded, &options);
        assert_eq!(summary.samples, 21);
        assert_eq!(total_samples(&svg), 21);
        let frames = frames(&svg);
        assert_eq!(
            frame(&frames, "retry\u{a0}12").title,
            "retry\u{a0}12 (5 samples, 23.81%)"
        );
        frame(&frames, "#\u{a0}hash");
        frame(&frames, "a b");
        frame(&frames, "c\u{FFFD}tl\u{FFFD}");
        frame(&frames, "[#]");
        frame(&frames, "#");
    }

    #[test]
    fn negative_counts_are_left_out_and_counted() {
        let (summary, svg) = draw("a 5\nb -3\n", &FlamegraphOptions::default());
        assert_eq!(
            (summary.stacks, summary.samples, summary.negative_stacks),
            (1, 5, 1)
        );
        assert!(summary
            .to_string()
            .contains("1 stacks with negative counts left out"));
        assert!(!has_frame(&frames(&svg), "b"));
    }

    #[test]
    fn write_failures_are_reported() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let data = read_folded("main 1\n").unwrap();
        let err = render(&data, &FlamegraphOptions::default(), Broken).unwrap_err();
        assert!(matches!(err, Error::Write(_)), "{err}");
    }

    const BEFORE: &str = "main;a 10\nmain;b 10\nmain;gone 10\n";
    const AFTER: &str = "main;a 5\nmain;b 20\nmain;c 5\n";

    #[test]
    fn diff_shows_both_profiles_frames_with_their_deltas() {
        let svg = draw_diff(BEFORE, AFTER, &FlamegraphOptions::default());
        let frames = frames(&svg);
        assert_eq!(frame(&frames, "a").title, "a (5 samples, 16.67%; -16.67%)");
        assert_eq!(frame(&frames, "b").title, "b (20 samples, 66.67%; +33.33%)");
        assert_eq!(frame(&frames, "c").title, "c (5 samples, 16.67%; +16.67%)");
        assert!(!has_frame(&frames, "gone"), "after has no width for it");
        let (r, g, b) = rgb(&frame(&frames, "a").fill);
        assert!(b == 255 && r == g && r < 255, "shrank is blue");
        let (r, g, b) = rgb(&frame(&frames, "b").fill);
        assert!(r == 255 && g == b && g < 255, "grew is red");
        assert_eq!(total_samples(&svg), 30);
    }

    #[test]
    fn diff_normalization_compares_shares() {
        let (before, after) = ("main;a 10\nmain;b 30\n", "main;a 20\nmain;b 60\n");
        let raw = frames(&draw_diff(before, after, &FlamegraphOptions::default()));
        assert!(frame(&raw, "b").title.ends_with("+37.50%)"));
        let options = FlamegraphOptions {
            normalize: true,
            ..FlamegraphOptions::default()
        };
        let normalized = frames(&draw_diff(before, after, &options));
        for name in ["a", "b"] {
            let f = frame(&normalized, name);
            assert!(f.title.ends_with("; 0.00%)"), "{}", f.title);
            assert_eq!(f.fill, "rgb(250,250,250)");
        }
        let (before, after) = (read_folded(before).unwrap(), read_folded(after).unwrap());
        let summary = render_diff(&before, &after, &options, std::io::sink()).unwrap();
        assert_eq!(summary.to_string(), "2 stacks, 80 -> 80 samples");
    }

    #[test]
    fn diff_widths_from_before_show_what_disappeared() {
        let options = FlamegraphOptions {
            diff_widths: DiffWidths::Before,
            ..FlamegraphOptions::default()
        };
        let frames = frames(&draw_diff(BEFORE, AFTER, &options));
        let gone = frame(&frames, "gone");
        assert_eq!(gone.title, "gone (10 samples, 33.33%; -33.33%)");
        assert_eq!(rgb(&gone.fill).2, 255, "shrank is still blue");
        let b = frame(&frames, "b");
        assert_eq!(b.title, "b (10 samples, 33.33%; +33.33%)");
        assert_eq!(rgb(&b.fill).0, 255, "grew is still red");
        assert!(!has_frame(&frames, "c"));
    }

    #[test]
    fn diff_against_an_empty_side() {
        let empty = "main 0\n";
        let mut svg = Vec::new();
        let data = |text: &str| read_folded(text).unwrap();
        let options = FlamegraphOptions::default();
        let err = render_diff(&data(BEFORE), &data(empty), &options, &mut svg).unwrap_err();
        assert!(
            matches!(err, Error::EmptyWidths(DiffWidths::After)),
            "{err}"
        );
        assert!(err.to_string().contains("after profile"), "{err}");
        let err = render_diff(&data(empty), &data(empty), &options, &mut svg).unwrap_err();
        assert!(matches!(err, Error::NoSamples), "{err}");
        assert!(svg.is_empty());

        // Everything new: all red.
        let frames = frames(&draw_diff(empty, AFTER, &options));
        assert!(frame(&frames, "c").title.ends_with("+16.67%)"));
        // Everything gone, drawn from before; normalising to nothing is skipped.
        let options = FlamegraphOptions {
            diff_widths: DiffWidths::Before,
            normalize: true,
            ..FlamegraphOptions::default()
        };
        let frames = self::frames(&draw_diff(BEFORE, empty, &options));
        assert!(frame(&frames, "gone").title.ends_with("-33.33%)"));
    }

    #[test]
    fn fold_options_follow_the_flamegraph_options() {
        let options = FlamegraphOptions {
            process_roots: true,
            thread_roots: true,
            kernel_frames: false,
            inlined_frames: false,
            sample_type: Some("samples".into()),
            ..FlamegraphOptions::default()
        };
        assert_eq!(
            options.fold_options(),
            FoldOptions {
                process_roots: true,
                thread_roots: true,
                kernel_frames: false,
                inlined_frames: false,
                annotate: true,
                sample_type: Some("samples".into()),
            }
        );
    }
}
