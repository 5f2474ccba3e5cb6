//! ipyparallel's own template syntax for users' batch templates: `{n}`, `{queue}`, `{n/4}`,
//! `{n//4}`, `{(n+3)//4}`, with `{{`/`}}` for literal braces. A small tokenizer and
//! recursive-descent evaluator over integers and floats; errors name the field.

use super::{ScriptVars, TemplateError};
use serde_json::{Map, Value};

/// Render ipyparallel's `{expr}` syntax: names, integers, `+ - * / // %` and parentheses.
/// `{n/4}` gives an integer when the division is exact.
pub fn render_ipp(text: &str, origin: &str, vars: &ScriptVars) -> Result<String, TemplateError> {
    let ctx = vars.to_context();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let c = rest.as_bytes()[pos];
        let after = &rest[pos + 1..];
        if c == b'}' {
            if let Some(r) = after.strip_prefix('}') {
                out.push('}');
                rest = r;
                continue;
            }
            return Err(TemplateError {
                origin: origin.into(),
                message: "single '}' (write '}}' for a literal brace)".into(),
            });
        }
        if let Some(r) = after.strip_prefix('{') {
            out.push('{');
            rest = r;
            continue;
        }
        let end = after.find('}').ok_or_else(|| TemplateError {
            origin: origin.into(),
            message: "unclosed '{'".into(),
        })?;
        let field = &after[..end];
        let expr = field.split_once(':').map(|(e, _)| e).unwrap_or(field);
        let v = eval(expr.trim(), &ctx).map_err(|m| TemplateError {
            origin: origin.into(),
            message: format!("{{{field}}}: {m}"),
        })?;
        out.push_str(&v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Num {
    Int(i64),
    Float(f64),
}

fn eval(expr: &str, ctx: &Map<String, Value>) -> Result<String, String> {
    let toks = tokenize(expr)?;
    if toks.len() == 1 {
        if let Tok::Name(name) = &toks[0] {
            return match ctx.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Null) => Ok(String::new()),
                Some(v) => Ok(v.to_string()),
                None => Err(format!(
                    "unknown variable {name:?} (known: {})",
                    ctx.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
            };
        }
    }
    let mut p = Arith { toks, i: 0, ctx };
    let v = p.expr()?;
    if p.i != p.toks.len() {
        return Err("unexpected text in expression".into());
    }
    Ok(match v {
        Num::Int(i) => i.to_string(),
        Num::Float(f) => format!("{f}"),
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Int(i64),
    Op(&'static str),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let st = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            out.push(Tok::Int(s[st..i].parse().map_err(|_| "bad number")?));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Name(s[st..i].to_string()));
        } else if s[i..].starts_with("//") {
            out.push(Tok::Op("//"));
            i += 2;
        } else {
            let op = match c {
                b'+' => "+",
                b'-' => "-",
                b'*' => "*",
                b'/' => "/",
                b'%' => "%",
                b'(' => "(",
                b')' => ")",
                _ => {
                    return Err(format!(
                        "unsupported character {:?} in expression",
                        c as char
                    ))
                }
            };
            out.push(Tok::Op(op));
            i += 1;
        }
    }
    Ok(out)
}

struct Arith<'a> {
    toks: Vec<Tok>,
    i: usize,
    ctx: &'a Map<String, Value>,
}

impl Arith<'_> {
    fn peek_op(&self) -> Option<&'static str> {
        match self.toks.get(self.i) {
            Some(Tok::Op(o)) => Some(o),
            _ => None,
        }
    }
    fn expr(&mut self) -> Result<Num, String> {
        let mut v = self.term()?;
        while let Some(op @ ("+" | "-")) = self.peek_op() {
            self.i += 1;
            let r = self.term()?;
            v = arith(op, v, r)?;
        }
        Ok(v)
    }
    fn term(&mut self) -> Result<Num, String> {
        let mut v = self.atom()?;
        while let Some(op @ ("*" | "/" | "//" | "%")) = self.peek_op() {
            self.i += 1;
            let r = self.atom()?;
            v = arith(op, v, r)?;
        }
        Ok(v)
    }
    fn atom(&mut self) -> Result<Num, String> {
        let t = self
            .toks
            .get(self.i)
            .cloned()
            .ok_or("expression ends early")?;
        self.i += 1;
        match t {
            Tok::Int(i) => Ok(Num::Int(i)),
            Tok::Name(n) => match self.ctx.get(&n) {
                Some(Value::Number(x)) => Ok(x
                    .as_i64()
                    .map(Num::Int)
                    .unwrap_or(Num::Float(x.as_f64().unwrap_or(0.0)))),
                Some(Value::String(s)) => s
                    .trim()
                    .parse::<i64>()
                    .map(Num::Int)
                    .map_err(|_| format!("{n} is not a number")),
                Some(_) => Err(format!("{n} has no value")),
                None => Err(format!("unknown variable {n:?}")),
            },
            Tok::Op("(") => {
                let v = self.expr()?;
                if self.peek_op() != Some(")") {
                    return Err("missing ')'".into());
                }
                self.i += 1;
                Ok(v)
            }
            Tok::Op("-") => Ok(match self.atom()? {
                Num::Int(i) => Num::Int(-i),
                Num::Float(f) => Num::Float(-f),
            }),
            Tok::Op(o) => Err(format!("unexpected {o:?}")),
        }
    }
}

fn arith(op: &str, a: Num, b: Num) -> Result<Num, String> {
    let f = |n: &Num| match n {
        Num::Int(i) => *i as f64,
        Num::Float(f) => *f,
    };
    match (op, &a, &b) {
        ("/" | "//" | "%", _, Num::Int(0)) => Err("division by zero".into()),
        ("+", Num::Int(x), Num::Int(y)) => Ok(Num::Int(x + y)),
        ("-", Num::Int(x), Num::Int(y)) => Ok(Num::Int(x - y)),
        ("*", Num::Int(x), Num::Int(y)) => Ok(Num::Int(x * y)),
        ("//", Num::Int(x), Num::Int(y)) => Ok(Num::Int(x.div_euclid(*y))),
        ("%", Num::Int(x), Num::Int(y)) => Ok(Num::Int(x.rem_euclid(*y))),
        ("/", Num::Int(x), Num::Int(y)) if x % y == 0 => Ok(Num::Int(x / y)),
        ("+", ..) => Ok(Num::Float(f(&a) + f(&b))),
        ("-", ..) => Ok(Num::Float(f(&a) - f(&b))),
        ("*", ..) => Ok(Num::Float(f(&a) * f(&b))),
        ("/", ..) => Ok(Num::Float(f(&a) / f(&b))),
        ("//", ..) => Ok(Num::Float((f(&a) / f(&b)).floor())),
        ("%", ..) => Ok(Num::Float(f(&a) % f(&b))),
        _ => Err(format!("unsupported operator {op}")),
    }
}
