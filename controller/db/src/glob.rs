//! `$glob` patterns: fnmatch-style shell wildcards, case-sensitive (as Python's `fnmatch` on
//! POSIX and SQLite's `GLOB`).
//!
//! `*` matches any run of characters, `?` one character, `[abc]`/`[a-z]` one of a set,
//! `[!abc]` or `[^abc]` one character not in it; a `]` first in a set is literal, and a `[`
//! with no closing `]` is a literal `[`. The same parsed pattern renders to SQLite `GLOB`
//! syntax and to an anchored regular expression (MongoDB).

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(char),
    One,
    Star,
    Set {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A parsed glob pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Glob {
    pattern: String,
    toks: Vec<Tok>,
}

impl Glob {
    /// Parse a pattern; every string is a valid pattern.
    pub fn new(pattern: &str) -> Glob {
        let chars: Vec<char> = pattern.chars().collect();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => {
                    if toks.last() != Some(&Tok::Star) {
                        toks.push(Tok::Star);
                    }
                    i += 1;
                }
                '?' => {
                    toks.push(Tok::One);
                    i += 1;
                }
                '[' => match parse_set(&chars, i + 1) {
                    Some((tok, next)) => {
                        toks.push(tok);
                        i = next;
                    }
                    None => {
                        toks.push(Tok::Lit('['));
                        i += 1;
                    }
                },
                c => {
                    toks.push(Tok::Lit(c));
                    i += 1;
                }
            }
        }
        Glob {
            pattern: pattern.to_string(),
            toks,
        }
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Does the whole of `s` match?
    pub fn matches(&self, s: &str) -> bool {
        let text: Vec<char> = s.chars().collect();
        let (mut ti, mut pi) = (0usize, 0usize);
        // Position after the last `*` seen and the text index it was tried at.
        let mut backtrack: Option<(usize, usize)> = None;
        while ti < text.len() {
            let step = match self.toks.get(pi) {
                Some(Tok::Star) => {
                    backtrack = Some((pi + 1, ti));
                    pi += 1;
                    continue;
                }
                Some(Tok::Lit(c)) => *c == text[ti],
                Some(Tok::One) => true,
                Some(Tok::Set { negated, ranges }) => {
                    let c = text[ti];
                    ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
                }
                None => false,
            };
            if step {
                ti += 1;
                pi += 1;
            } else if let Some((bp, bt)) = backtrack {
                pi = bp;
                ti = bt + 1;
                backtrack = Some((bp, bt + 1));
            } else {
                return false;
            }
        }
        self.toks[pi..].iter().all(|t| *t == Tok::Star)
    }

    /// The pattern in SQLite `GLOB` syntax, matching exactly the same strings.
    pub fn to_sql(&self) -> String {
        let mut out = String::new();
        for t in &self.toks {
            match t {
                Tok::Star => out.push('*'),
                Tok::One => out.push('?'),
                // SQLite has no escape character: a special character goes in a one-char set.
                Tok::Lit(c @ ('*' | '?' | '[')) => {
                    out.push('[');
                    out.push(*c);
                    out.push(']');
                }
                Tok::Lit(c) => out.push(*c),
                Tok::Set { negated, ranges } => {
                    out.push('[');
                    if *negated {
                        out.push('^');
                    }
                    // `]` must come first to be literal; `^` must not come first; `-` last.
                    let mut items: Vec<&(char, char)> = ranges.iter().collect();
                    items.sort_by_key(|(lo, hi)| match (lo, hi) {
                        (']', ']') => 0,
                        ('-', '-') => 3,
                        ('^', '^') => 2,
                        _ => 1,
                    });
                    for &&(lo, hi) in &items {
                        if lo == hi {
                            out.push(lo);
                        } else {
                            out.push(lo);
                            out.push('-');
                            out.push(hi);
                        }
                    }
                    // A set holding only `^` would read as a negation marker: add it twice.
                    if !*negated && items.len() == 1 && *items[0] == ('^', '^') {
                        out.push('^');
                    }
                    out.push(']');
                }
            }
        }
        out
    }

    /// The pattern as an anchored regular expression (`^…$`, dot matching newlines), for
    /// MongoDB's `$regex`.
    pub fn to_regex(&self) -> String {
        let mut out = String::from("^");
        for t in &self.toks {
            match t {
                Tok::Star => out.push_str("[\\s\\S]*"),
                Tok::One => out.push_str("[\\s\\S]"),
                Tok::Lit(c) => push_regex_lit(&mut out, *c),
                Tok::Set { negated, ranges } => {
                    out.push('[');
                    if *negated {
                        out.push('^');
                    }
                    for &(lo, hi) in ranges {
                        push_class_char(&mut out, lo);
                        if lo != hi {
                            out.push('-');
                            push_class_char(&mut out, hi);
                        }
                    }
                    out.push(']');
                }
            }
        }
        out.push('$');
        out
    }
}

fn push_regex_lit(out: &mut String, c: char) {
    if "\\^$.|?*+()[]{}/-".contains(c) {
        out.push('\\');
    }
    out.push(c);
}

fn push_class_char(out: &mut String, c: char) {
    if "\\^]-[".contains(c) {
        out.push('\\');
    }
    out.push(c);
}

/// Parse a set starting just after `[`; `None` when it has no closing `]`.
fn parse_set(chars: &[char], start: usize) -> Option<(Tok, usize)> {
    let mut i = start;
    let mut negated = false;
    if matches!(chars.get(i), Some('!' | '^')) {
        negated = true;
        i += 1;
    }
    let mut ranges = Vec::new();
    let first = i;
    loop {
        let c = *chars.get(i)?;
        if c == ']' && i > first {
            return Some((Tok::Set { negated, ranges }, i + 1));
        }
        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|&h| h != ']') {
            let hi = chars[i + 2];
            if c <= hi {
                ranges.push((c, hi));
            }
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Glob::new(p).matches(s)
    }

    #[test]
    fn wildcards() {
        assert!(m("*", ""));
        assert!(m("a*", "abc"));
        assert!(!m("a*", "bac"));
        assert!(m("*c", "abc"));
        assert!(m("a*b*c", "a-b-b-c"));
        assert!(!m("a*b*c", "a-b-b-d"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("é?", "éx"));
        assert!(!m("ABC", "abc"), "case-sensitive");
        assert!(m("**x", "yyx"));
    }

    #[test]
    fn sets() {
        assert!(m("[abc]x", "bx"));
        assert!(!m("[abc]x", "dx"));
        assert!(m("[a-c]", "b"));
        assert!(m("[!a-c]", "d"));
        assert!(m("[^a-c]", "d"));
        assert!(!m("[!a-c]", "a"));
        assert!(m("[]]", "]"));
        assert!(m("[a-]", "-"));
        assert!(m("[", "["), "unclosed bracket is literal");
        assert!(m("a[b", "a[b"));
    }

    #[test]
    fn sql_and_regex_forms() {
        assert_eq!(Glob::new("a*[!x]?").to_sql(), "a*[^x]?");
        assert_eq!(Glob::new("a[").to_sql(), "a[[]");
        assert_eq!(Glob::new("[-]]").to_sql(), "[-]]");
        assert_eq!(Glob::new("a.b*").to_regex(), "^a\\.b[\\s\\S]*$");
        assert_eq!(Glob::new("[!a-c]").to_regex(), "^[^a-c]$");
    }
}
