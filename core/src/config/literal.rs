//! A small parser for Python (and JSON) literals, for `--Class.trait=value` on the command line:
//! numbers, strings in single or double quotes, `True`/`False`/`None` (and `true`/`false`/`null`),
//! lists, tuples and dicts. Anything else is not a literal and the caller keeps the raw text.

use serde_json::{Map, Number, Value};

/// Parse `text` as one literal; `None` if it is not exactly one literal.
pub fn parse(text: &str) -> Option<Value> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
        text,
    };
    let v = p.value()?;
    p.ws();
    (p.i == p.s.len()).then_some(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn value(&mut self) -> Option<Value> {
        self.ws();
        match self.peek()? {
            b'\'' | b'"' => self.string().map(Value::String),
            b'[' => {
                self.i += 1;
                self.seq(b']').map(Value::Array)
            }
            b'(' => {
                self.i += 1;
                self.seq(b')').map(Value::Array)
            }
            b'{' => {
                self.i += 1;
                self.dict()
            }
            b'-' | b'+' | b'.' | b'0'..=b'9' => self.number(),
            _ => self.word(),
        }
    }
    fn seq(&mut self, close: u8) -> Option<Vec<Value>> {
        let mut out = Vec::new();
        loop {
            if self.eat(close) {
                return Some(out);
            }
            out.push(self.value()?);
            if !self.eat(b',') {
                return self.eat(close).then_some(out);
            }
        }
    }
    fn dict(&mut self) -> Option<Value> {
        let mut out = Map::new();
        loop {
            if self.eat(b'}') {
                return Some(Value::Object(out));
            }
            let key = match self.value()? {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => if b { "True" } else { "False" }.to_string(),
                _ => return None,
            };
            if !self.eat(b':') {
                return None;
            }
            let v = self.value()?;
            out.insert(key, v);
            if !self.eat(b',') {
                return self.eat(b'}').then_some(Value::Object(out));
            }
        }
    }
    fn word(&mut self) -> Option<Value> {
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
        {
            self.i += 1;
        }
        match &self.text[start..self.i] {
            "True" | "true" => Some(Value::Bool(true)),
            "False" | "false" => Some(Value::Bool(false)),
            "None" | "null" => Some(Value::Null),
            _ => None,
        }
    }
    fn number(&mut self) -> Option<Value> {
        let start = self.i;
        while self.i < self.s.len()
            && matches!(
                self.s[self.i],
                b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-' | b'_'
            )
        {
            self.i += 1;
        }
        let raw: String = self.text[start..self.i]
            .chars()
            .filter(|c| *c != '_')
            .collect();
        if let Ok(i) = raw.parse::<i64>() {
            return Some(Value::Number(i.into()));
        }
        let f: f64 = raw.parse().ok()?;
        Number::from_f64(f).map(Value::Number)
    }
    fn string(&mut self) -> Option<String> {
        let quote = self.s[self.i];
        self.i += 1;
        let mut out = String::new();
        let rest = &self.text[self.i..];
        let mut chars = rest.char_indices();
        while let Some((off, c)) = chars.next() {
            if c as u32 == quote as u32 {
                self.i += off + 1;
                return Some(out);
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let (_, e) = chars.next()?;
            match e {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '0' => out.push('\0'),
                '\\' | '\'' | '"' | '/' => out.push(e),
                'u' => {
                    let hex: String = (0..4)
                        .filter_map(|_| chars.next().map(|(_, h)| h))
                        .collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => {
                    out.push('\\');
                    out.push(other);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use serde_json::json;

    #[test]
    fn literals() {
        assert_eq!(parse("42"), Some(json!(42)));
        assert_eq!(parse("-1.5e3"), Some(json!(-1500.0)));
        assert_eq!(parse("True"), Some(json!(true)));
        assert_eq!(parse("None"), Some(json!(null)));
        assert_eq!(parse("'*'"), Some(json!("*")));
        assert_eq!(parse(r#""a\"b""#), Some(json!("a\"b")));
        assert_eq!(
            parse("['--a', 2, (3, 4),]"),
            Some(json!(["--a", 2, [3, 4]]))
        );
        assert_eq!(
            parse("{'h1': 2, 'h2': (1, ['--x'])}"),
            Some(json!({"h1": 2, "h2": [1, ["--x"]]}))
        );
    }

    #[test]
    fn not_literals() {
        assert_eq!(parse("*"), None);
        assert_eq!(parse("10.0.1.5"), None);
        assert_eq!(parse("mpi"), None);
        assert_eq!(parse("'open"), None);
        assert_eq!(parse("[1, 2"), None);
        assert_eq!(parse("1 2"), None);
    }
}
