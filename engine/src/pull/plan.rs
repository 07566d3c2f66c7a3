//! Splitting files into ranged requests.
//!
//! A file is a run of chunks (the unit of buffering, writing and checksumming); a range is the
//! unit of one HTTP request. Ranges cover only the chunks still missing, so a resumed file asks
//! for exactly what it lacks.

/// Splits the chunks of `[from, chunks)` for which `done` is false into ranges of at most
/// `step` chunks, as `(first chunk, end chunk)` pairs in file order. No range crosses a
/// multiple of `step`: a resumed file's ranges fall where a fresh one's would, so each lies
/// within one block of an origin gate (whose blocks are multiples of the range size).
pub fn ranges(from: u64, chunks: u64, step: u64, done: impl Fn(u64) -> bool) -> Vec<(u64, u64)> {
    let step = step.max(1);
    let mut out = Vec::with_capacity(((chunks.saturating_sub(from)) / step + 1) as usize);
    let mut c = from;
    while c < chunks {
        if done(c) {
            c += 1;
            continue;
        }
        let mut e = c + 1;
        while e < chunks && !e.is_multiple_of(step) && !done(e) {
            e += 1;
        }
        out.push((c, e));
        c = e;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_evenly_with_a_short_last_range() {
        assert_eq!(ranges(0, 10, 4, |_| false), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(ranges(4, 10, 4, |_| false), vec![(4, 8), (8, 10)]);
        assert_eq!(ranges(0, 0, 4, |_| false), vec![]);
    }

    #[test]
    fn skips_done_chunks() {
        let done = [
            true, false, false, true, false, false, false, false, false, true,
        ];
        assert_eq!(
            ranges(0, 10, 3, |c| done[c as usize]),
            vec![(1, 3), (4, 6), (6, 9)]
        );
        assert_eq!(ranges(0, 3, 3, |_| true), vec![]);
    }
}
