//! "Did you mean …?": the closest known word to a misspelt one.

/// The known word closest to `word`, if one is close enough to be a likely typo.
pub fn closest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let norm = normalize(word);
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in known {
        let cand = normalize(candidate);
        let distance = if cand == norm {
            0
        } else {
            let d = edit_distance(&norm, &cand);
            let limit = (cand.len().max(norm.len()) / 3).clamp(1, 3);
            if d <= limit {
                d
            } else if norm.len() >= 4 && (cand.contains(&norm) || norm.contains(&cand)) {
                // "secret_file" for "client_secret_file", "timeout_secs" for "timeout".
                limit + cand.len().abs_diff(norm.len())
            } else {
                continue;
            }
        };
        if best.is_none_or(|(b, _)| distance < b) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}

fn normalize(word: &str) -> String {
    word.trim().to_ascii_lowercase().replace(['-', ' '], "_")
}

/// Levenshtein distance with adjacent transpositions counted as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &[
        "client_secret",
        "client_secret_file",
        "client_id",
        "timeout",
    ];

    #[test]
    fn typos_find_their_key() {
        let known = || KEYS.iter().copied();
        assert_eq!(
            closest("client_secret_fil", known()),
            Some("client_secret_file")
        );
        assert_eq!(
            closest("client-secret-file", known()),
            Some("client_secret_file")
        );
        assert_eq!(closest("secret_file", known()), Some("client_secret_file"));
        assert_eq!(closest("timeuot", known()), Some("timeout"));
        assert_eq!(closest("clientid", known()), Some("client_id"));
        assert_eq!(closest("banana", known()), None);
    }
}
