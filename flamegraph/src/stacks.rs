//! Folded stacks made safe for inferno's line parser: merged, counted,
//! sorted, and with names that cannot be mistaken for counts, comments or
//! invalid XML. Owns nothing but text; colours live in `frame_type`.

use std::collections::BTreeMap;

use crate::error::Error;

/// Totals above this lose precision in inferno's `f64` percentages, and
/// differential colours multiply counts by 150 in an `isize`.
const MAX_TOTAL: u128 = 1 << 53;

/// The stacks of one profile, sorted by stack as inferno's merge requires.
pub(crate) struct Stacks {
    pub(crate) counts: BTreeMap<String, u64>,
    pub(crate) total: u64,
    /// Stacks left out because their count was negative.
    pub(crate) negative: usize,
}

impl Stacks {
    pub(crate) fn new(folded: Vec<(String, i64)>) -> Result<Stacks, Error> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut total: u128 = 0;
        let mut negative = 0;
        for (stack, count) in folded {
            let Ok(count) = u64::try_from(count) else {
                negative += 1;
                continue;
            };
            if count == 0 {
                continue;
            }
            total += u128::from(count);
            let slot = counts.entry(sanitize(&stack)).or_default();
            *slot = slot.saturating_add(count);
        }
        if total > MAX_TOTAL {
            return Err(Error::TooManySamples { total });
        }
        Ok(Stacks {
            counts,
            total: total as u64,
            negative,
        })
    }

    /// `stack count` lines, sorted, made of the stacks themselves.
    pub(crate) fn into_lines(self) -> Vec<String> {
        self.counts
            .into_iter()
            .map(|(mut stack, count)| {
                stack.push(' ');
                stack.push_str(&count.to_string());
                stack
            })
            .collect()
    }
}

/// The stacks of two profiles side by side, `(before, after)`.
pub(crate) struct DiffStacks {
    pub(crate) counts: BTreeMap<String, (u64, u64)>,
}

impl DiffStacks {
    pub(crate) fn new(before: &Stacks, after: &Stacks, normalize: bool) -> DiffStacks {
        let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        // Scaling to an empty profile would erase `before`; draw it as is.
        let scale = normalize && before.total > 0 && after.total > 0;
        for (stack, &count) in &before.counts {
            let count = if scale {
                scale_count(count, after.total, before.total)
            } else {
                count
            };
            counts.entry(stack.clone()).or_default().0 = count;
        }
        for (stack, &count) in &after.counts {
            counts.entry(stack.clone()).or_default().1 = count;
        }
        counts.retain(|_, &mut (b, a)| b > 0 || a > 0);
        DiffStacks { counts }
    }

    pub(crate) fn totals(&self) -> (u64, u64) {
        self.counts
            .values()
            .fold((0, 0), |(tb, ta), &(b, a)| (tb + b, ta + a))
    }

    /// `stack first second` lines, sorted: inferno draws the widths of the
    /// last count and the colour of `last - first`.
    pub(crate) fn lines(&self, widths_from_before: bool) -> Vec<String> {
        self.counts
            .iter()
            .map(|(stack, &(b, a))| {
                if widths_from_before {
                    format!("{stack} {a} {b}")
                } else {
                    format!("{stack} {b} {a}")
                }
            })
            .collect()
    }
}

/// `count * to / from`, rounded to nearest; exact since all are at most 2^53.
fn scale_count(count: u64, to: u64, from: u64) -> u64 {
    let (count, to, from) = (u128::from(count), u128::from(to), u128::from(from));
    ((count * to * 2 + from) / (from * 2)) as u64
}

/// Makes a folded stack read back by inferno as exactly the frames it
/// names. Inferno trims each line, skips lines starting with `# `, and
/// reads a trailing ` NUMBER` of the stack as a count (a differential
/// line); quick-xml writes control characters into the SVG unescaped,
/// which no XML parser accepts.
pub(crate) fn sanitize(stack: &str) -> String {
    let cleaned: String = stack
        .chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => ' ',
            c if is_xml_char(c) => c,
            _ => char::REPLACEMENT_CHARACTER,
        })
        .collect();
    let mut stack = cleaned.trim().to_owned();
    if stack.is_empty() {
        return "[unknown]".to_owned();
    }
    if stack == "#" {
        return "[#]".to_owned();
    }
    if stack.starts_with("# ") {
        stack.replace_range(1..2, "\u{a0}");
    }
    if let Some(space) = stack.rfind(' ') {
        let tail = &stack[space + 1..];
        if tail.chars().all(|c| c.is_ascii_digit() || c == '.') {
            stack.replace_range(space..space + 1, "\u{a0}");
        }
    }
    stack
}

/// Characters XML 1.0 allows in text (`Char` production), less the
/// line breaks the folded format cannot hold.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `text` with every character XML cannot hold replaced.
pub(crate) fn xml_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => ' ',
            c if is_xml_char(c) => c,
            _ => char::REPLACEMENT_CHARACTER,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_inferno_from_misreading_names() {
        assert_eq!(sanitize("main;work"), "main;work");
        assert_eq!(sanitize("  main;leaf  "), "main;leaf");
        assert_eq!(sanitize("# root;leaf"), "#\u{a0}root;leaf");
        assert_eq!(sanitize("main;retry 12"), "main;retry\u{a0}12");
        assert_eq!(sanitize("main;v 1.5"), "main;v\u{a0}1.5");
        assert_eq!(sanitize("main;call 1 2"), "main;call 1\u{a0}2");
        assert_eq!(sanitize("main;a\tb"), "main;a b");
        assert_eq!(sanitize("x\u{1}y;\u{FFFF}"), "x\u{FFFD}y;\u{FFFD}");
        assert_eq!(sanitize(" \t "), "[unknown]");
        assert_eq!(sanitize("#"), "[#]");
        assert_eq!(sanitize("#;a"), "#;a");
    }

    #[test]
    fn stacks_merge_after_sanitizing_and_skip_negative_counts() {
        let stacks = Stacks::new(vec![
            ("a;b".into(), 2),
            ("a;b ".into(), 3),
            ("a;c".into(), -4),
            ("a;d".into(), 0),
        ])
        .unwrap();
        assert_eq!((stacks.total, stacks.negative), (5, 1));
        assert_eq!(stacks.into_lines(), ["a;b 5"]);
    }

    #[test]
    fn too_many_samples_is_an_error() {
        let huge = vec![("a".into(), i64::MAX), ("b".into(), i64::MAX)];
        assert!(matches!(
            Stacks::new(huge),
            Err(Error::TooManySamples { .. })
        ));
    }

    #[test]
    fn normalization_scales_before_to_after_total() {
        let before = Stacks::new(vec![("a".into(), 10), ("b".into(), 30)]).unwrap();
        let after = Stacks::new(vec![("a".into(), 20), ("c".into(), 60)]).unwrap();
        let diff = DiffStacks::new(&before, &after, true);
        assert_eq!(diff.lines(false), ["a 20 20", "b 60 0", "c 0 60"]);
        assert_eq!(diff.lines(true), ["a 20 20", "b 0 60", "c 60 0"]);
        let raw = DiffStacks::new(&before, &after, false);
        assert_eq!(raw.totals(), (40, 80));
    }
}
