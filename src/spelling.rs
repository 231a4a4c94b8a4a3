//! Spelling on the bottom floor: the edit distance behind every "did you
//! mean" (unknown words, ImageNet class names).

/// Edit distance between two strings (swaps of neighbours count as one edit).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let limit = a.len().max(b.len());
    levenshtein(&a, &b, limit)
}

/// Edit distance counting a swap of neighbours as one edit (optimal string
/// alignment), giving up (returning `limit + 1`) once it exceeds `limit`.
pub fn levenshtein(a: &[char], b: &[char], limit: usize) -> usize {
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 0..a.len() {
        cur[0] = i + 1;
        let mut row_min = cur[0];
        for j in 0..b.len() {
            let mut d = (prev[j] + (a[i] != b[j]) as usize).min(prev[j + 1] + 1).min(cur[j] + 1);
            if i > 0 && j > 0 && a[i] == b[j - 1] && a[i - 1] == b[j] {
                d = d.min(before[j - 1] + 1);
            }
            cur[j + 1] = d;
            row_min = row_min.min(d);
        }
        if row_min > limit {
            return limit + 1;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}
