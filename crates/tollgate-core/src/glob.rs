//! Glob patterns over names (`gpt-4o*`, `anthropic/*`, `model-?`): `*` matches any run of
//! characters, `?` exactly one. No character classes; names are matched whole.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    literal: bool,
}

impl Glob {
    pub fn new(pattern: impl Into<String>) -> Glob {
        let pattern = pattern.into();
        let literal = !pattern.contains(['*', '?']);
        Glob { pattern, literal }
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    pub fn matches(&self, name: &str) -> bool {
        if self.literal {
            return self.pattern == name;
        }
        if self.pattern == "*" {
            return true;
        }
        let p: Vec<char> = self.pattern.chars().collect();
        let s: Vec<char> = name.chars().collect();
        matches(&p, &s)
    }
}

/// Iterative wildcard match with single-star backtracking: linear in practice, no recursion.
fn matches(p: &[char], s: &[char]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == s.get(si) => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).unwrap_or_default().iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn globs() {
        let cases = [
            ("gpt-4o", "gpt-4o", true),
            ("gpt-4o", "gpt-4o-mini", false),
            ("gpt-*", "gpt-4o-mini", true),
            ("gpt-*", "claude", false),
            ("*", "", true),
            ("anthropic/*", "anthropic/claude-3", true),
            ("*-mini", "gpt-4o-mini", true),
            ("m?del", "model", true),
            ("m?del", "mdel", false),
            ("m?del", "mödel", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ];
        for (p, s, want) in cases {
            assert_eq!(Glob::new(p).matches(s), want, "{p} vs {s}");
        }
    }
}
