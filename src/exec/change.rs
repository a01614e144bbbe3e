//! A changed param as a person spots it: short values whole (`4 → 6`), a long one (a
//! 200-character `run` line) as the part that changed in a little context,
//! `…edgedetect=low=0.05:high=[0.15 → 0.25],negate…`.

/// Values up to this many characters are shown whole.
const WHOLE: usize = 40;
/// Characters of unchanged context shown on each side of the change.
const CONTEXT: usize = 24;
/// A change spanning more than this (several edits far apart) is shown whole.
const MAX_SPAN: usize = 80;

/// `old → new`, or the changed span of a long value in context.
pub fn show_change(old: &str, new: &str) -> String {
    let (a, b): (Vec<char>, Vec<char>) = (old.chars().collect(), new.chars().collect());
    if a.len().max(b.len()) <= WHOLE {
        return format!("{old} → {new}");
    }
    let mut pre = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let max_suf = a.len().min(b.len()) - pre;
    let mut suf = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take(max_suf)
        .take_while(|(x, y)| x == y)
        .count();
    // Widen a change inside a word or number to all of it (`0.15`, not `1`).
    let word = |c: char| c.is_alphanumeric() || c == '.' || c == '_';
    let at = |v: &[char], i: usize| v.get(i).is_some_and(|&c| word(c));
    if at(&a, pre) || at(&b, pre) {
        while pre > 0 && word(a[pre - 1]) {
            pre -= 1;
        }
    }
    let ends_in_word = |v: &[char]| v.len() - suf > pre && word(v[v.len() - suf - 1]);
    if ends_in_word(&a) || ends_in_word(&b) {
        while suf > 0 && word(a[a.len() - suf]) {
            suf -= 1;
        }
    }
    let (mid_a, mid_b) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    if mid_a.len().max(mid_b.len()) > MAX_SPAN {
        return format!("{old} → {new}");
    }
    let s = |cs: &[char]| cs.iter().collect::<String>();
    // About CONTEXT characters each side, not cutting a word.
    let mut left_from = pre.saturating_sub(CONTEXT);
    while left_from > 0 && word(a[left_from - 1]) && word(a[left_from]) {
        left_from -= 1;
    }
    let mut right_to = (a.len() - suf + CONTEXT).min(a.len());
    while right_to < a.len() && word(a[right_to - 1]) && word(a[right_to]) {
        right_to += 1;
    }
    format!(
        "{}{}[{} → {}]{}{}",
        if left_from > 0 { "…" } else { "" },
        s(&a[left_from..pre]),
        s(mid_a),
        s(mid_b),
        s(&a[a.len() - suf..right_to]),
        if right_to < a.len() { "…" } else { "" },
    )
}

#[cfg(test)]
mod tests {
    use super::show_change;

    #[test]
    fn short_values_are_shown_whole() {
        assert_eq!(show_change("4", "6"), "4 → 6");
        assert_eq!(show_change("constant", "cosine"), "constant → cosine");
    }

    #[test]
    fn a_long_value_shows_the_changed_number_whole_in_context() {
        let run = |high: &str| {
            format!("[\"sh\",\"-c\",\"ffmpeg -loglevel error -i in.png -vf split[a][b];[b]edgedetect=low=0.05:high={high},negate[e];[a][e]blend=all_mode=multiply out.png\"]")
        };
        assert_eq!(
            show_change(&run("0.15"), &run("0.25")),
            "…edgedetect=low=0.05:high=[0.15 → 0.25],negate[e];[a][e]blend=all_mode…"
        );
        // Inserted and removed text, at the start and at the end.
        let long = "ab ".repeat(20);
        assert_eq!(
            show_change(&format!("{long}tail"), &format!("{long}tail --fast")),
            "…ab ab ab ab ab ab ab tail[ →  --fast]"
        );
        assert_eq!(
            show_change(&format!("tail {long}"), &format!("--fast tail {long}")),
            "[ → --fast ]tail ab ab ab ab ab ab ab…"
        );
    }

    #[test]
    fn edits_far_apart_show_both_values_whole() {
        let mid = "y".repeat(100);
        let (old, new) = (format!("a {mid} b"), format!("c {mid} d"));
        assert_eq!(show_change(&old, &new), format!("{old} → {new}"));
    }
}
