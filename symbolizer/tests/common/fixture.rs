// Fixture for smolder-symbolizer tests: generics, closures, iterators and
// std code that rustc inlines heavily at opt-level=3.
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    stack: Vec<u64>,
    weight: u64,
}

trait Score {
    fn score(&self) -> u64;
}

impl Score for Sample {
    #[inline]
    fn score(&self) -> u64 {
        self.stack.iter().fold(self.weight, |acc, pc| acc.rotate_left(5) ^ pc)
    }
}

#[inline(never)]
fn make_samples(n: usize, seed: u64) -> Vec<Sample> {
    let mut x = seed;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Sample {
                stack: (0..(i % 7 + 1) as u64).map(|d| (x >> d) & 0xffff).collect(),
                weight: x % 100,
            }
        })
        .collect()
}

#[inline(never)]
fn aggregate<T: Score>(items: &[T]) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for item in items {
        *counts.entry(item.score() % 97).or_insert(0) += 1;
    }
    counts
}

#[inline(never)]
fn render(counts: &HashMap<u64, usize>) -> String {
    let sorted: BTreeMap<_, _> = counts.iter().collect();
    let mut out = String::new();
    for (k, v) in sorted {
        let _ = writeln!(out, "{k:>4} {}", "#".repeat(*v));
    }
    out
}

#[inline(never)]
fn parse_numbers(text: &str) -> Vec<i64> {
    text.split(|c: char| !c.is_ascii_digit() && c != '-')
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[inline(never)]
pub fn fold_stacks(samples: &[Sample]) -> Vec<(String, u64)> {
    let mut folded: HashMap<String, u64> = HashMap::new();
    for s in samples {
        let key = s
            .stack
            .iter()
            .rev()
            .map(|pc| format!("f{pc:x}"))
            .collect::<Vec<_>>()
            .join(";");
        *folded.entry(key).or_default() += s.weight;
    }
    let mut v: Vec<_> = folded.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        println!("make_samples {:p}", make_samples as *const ());
        println!("aggregate {:p}", aggregate::<Sample> as *const ());
        println!("render {:p}", render as *const ());
        println!("ready");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    let samples = make_samples(500 + args.len(), 0x9e3779b97f4a7c15);
    let counts = aggregate(&samples);
    print!("{}", render(&counts));
    let nums = parse_numbers(&format!("{:?}", counts.values().collect::<Vec<_>>()));
    println!("{} {}", nums.len(), fold_stacks(&samples).len());
}
