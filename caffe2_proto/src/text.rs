//! Protobuf text format (`.pbtxt`): a printer and a parser of our own, driven by
//! rust-protobuf's reflection, so that every value survives a text round trip.
//!
//! Why not rust-protobuf's own `text_format`: in 3.7 it prints floats with `{}` (so
//! `f32::MAX` becomes a 39-digit integer literal its own parser rejects), prints NaN as `NaN`,
//! parses `f32` fields through `f64` (double rounding), and knows neither `inf`/`nan` nor
//! unknown fields.
//!
//! Printing rules (compatible with the C++ and Python text parsers):
//! - fields in field-number order, one per line, two-space indentation; unknown fields last,
//!   by number (`7: 42`, `7: 0x0000002a` for fixed32, `7: 0x000000000000002a` for fixed64,
//!   `7: "bytes"` for length-delimited);
//! - floats in their shortest form that reads back to the same bits ([`format_f32`],
//!   [`format_f64`]): `inf`, `-inf`, `nan`, `-nan`, `-0`, exponent form outside
//!   `[1e-4, 1e9)`;
//! - strings and bytes in double quotes with C escapes; bytes outside printable ASCII as
//!   three-digit octal (`"\001\177\200"`); UTF-8 text in `string` fields is kept as is.
//!
//! Parsing accepts the text format as written by C++, Python and rust-protobuf: `#` comments,
//! optional `:` before messages, `{}` or `<>` message delimiters, `[a, b]` lists for repeated
//! fields, optional `,`/`;` separators, adjacent string literals concatenated, octal/hex
//! escapes (`"\1"`, `"\x7f"`, `"\u00e9"`), decimal/octal/hex integers, float literals with an
//! optional `f` suffix, `inf`/`infinity`/`nan` (any case, optionally negated), enum values by
//! name or number, booleans as `true`/`True`/`t`/`1` and `false`/`False`/`f`/`0`, and numeric
//! field names for unknown fields. Floats are read straight into `f32`/`f64` with correct
//! rounding. A NaN keeps its sign but not its payload (text format has no syntax for it).

use std::fmt::Write as _;

use protobuf::reflect::{
    FieldDescriptor, MessageDescriptor, ReflectFieldRef, ReflectValueBox, ReflectValueRef,
    RuntimeFieldType, RuntimeType,
};
use protobuf::{MessageDyn, MessageFull, UnknownValueRef};

/// Deepest message nesting the parser accepts (same limit as the C++ parser).
pub const MAX_DEPTH: usize = 100;

/// A text-format parse error, located in the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {msg}")]
pub struct TextError {
    /// 1-based line of the offending token.
    pub line: usize,
    /// 1-based column (in bytes) of the offending token.
    pub column: usize,
    /// What is wrong.
    pub msg: String,
}

// ------------------------------------------------------------------------------------------
// Printing
// ------------------------------------------------------------------------------------------

/// Prints a message in protobuf text format (one field per line).
pub fn print<M: MessageFull>(msg: &M) -> String {
    print_dyn(msg)
}

/// Prints a message given as a trait object in protobuf text format.
pub fn print_dyn(msg: &dyn MessageDyn) -> String {
    let mut out = String::new();
    print_message(msg, 0, &mut out);
    out
}

/// Formats an `f32` in the shortest decimal form that parses back to the same bits
/// (`nan`/`-nan`, `inf`/`-inf` and `-0` included).
pub fn format_f32(v: f32) -> String {
    let mut out = String::new();
    push_f32(v, &mut out);
    out
}

/// Formats an `f64` in the shortest decimal form that parses back to the same bits
/// (`nan`/`-nan`, `inf`/`-inf` and `-0` included).
pub fn format_f64(v: f64) -> String {
    let mut out = String::new();
    push_f64(v, &mut out);
    out
}

/// Writes `nan`, `-nan`, `inf` or `-inf` and returns true, or returns false for a finite value.
fn push_non_finite(nan: bool, infinite: bool, negative: bool, out: &mut String) -> bool {
    let word = match (nan, infinite, negative) {
        (true, _, false) => "nan",
        (true, _, true) => "-nan",
        (false, true, false) => "inf",
        (false, true, true) => "-inf",
        (false, false, _) => return false,
    };
    out.push_str(word);
    true
}

// Rust's `{}`/`{:e}` print the shortest digits that read back to the same value; the
// exponent form keeps very large and very small magnitudes short.
fn push_f32(v: f32, out: &mut String) {
    if !push_non_finite(v.is_nan(), v.is_infinite(), v.is_sign_negative(), out) {
        let a = v.abs();
        let _ = if a == 0.0 || (1e-4..1e9).contains(&a) {
            write!(out, "{v}")
        } else {
            write!(out, "{v:e}")
        };
    }
}

fn push_f64(v: f64, out: &mut String) {
    if !push_non_finite(v.is_nan(), v.is_infinite(), v.is_sign_negative(), out) {
        let a = v.abs();
        let _ = if a == 0.0 || (1e-4..1e9).contains(&a) {
            write!(out, "{v}")
        } else {
            write!(out, "{v:e}")
        };
    }
}

/// Appends `bytes` as a double-quoted C-escaped literal. With `keep_utf8`, bytes >= 0x80 are
/// copied as is (the caller guarantees valid UTF-8); otherwise they become octal escapes.
fn quote_to(bytes: &[u8], keep_utf8: bool, out: &mut String) {
    out.push('"');
    if keep_utf8 {
        // Valid UTF-8 by contract (it comes from a `&str`); escape only ASCII controls.
        let s = String::from_utf8_lossy(bytes);
        for c in s.chars() {
            if c.is_ascii() {
                escape_byte(c as u8, out);
            } else {
                out.push(c);
            }
        }
    } else {
        for &b in bytes {
            escape_byte(b, out);
        }
    }
    out.push('"');
}

fn escape_byte(b: u8, out: &mut String) {
    match b {
        b'\n' => out.push_str("\\n"),
        b'\r' => out.push_str("\\r"),
        b'\t' => out.push_str("\\t"),
        b'"' => out.push_str("\\\""),
        b'\'' => out.push_str("\\'"),
        b'\\' => out.push_str("\\\\"),
        0x20..=0x7e => out.push(b as char),
        _ => {
            let _ = write!(out, "\\{b:03o}");
        }
    }
}

fn indent(depth: usize, out: &mut String) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn sorted_fields(d: &MessageDescriptor) -> Vec<FieldDescriptor> {
    let mut fields: Vec<FieldDescriptor> = d.fields().collect();
    fields.sort_by_key(|f| f.number());
    fields
}

fn print_message(msg: &dyn MessageDyn, depth: usize, out: &mut String) {
    let d = msg.descriptor_dyn();
    for f in sorted_fields(&d) {
        match f.get_reflect(msg) {
            ReflectFieldRef::Optional(opt) => {
                if let Some(v) = opt.value() {
                    print_field(f.name(), &v, depth, out);
                }
            }
            ReflectFieldRef::Repeated(rep) => {
                for v in rep {
                    print_field(f.name(), &v, depth, out);
                }
            }
            ReflectFieldRef::Map(map) => {
                for (k, v) in &map {
                    indent(depth, out);
                    out.push_str(f.name());
                    out.push_str(" {\n");
                    print_field("key", &k, depth + 1, out);
                    print_field("value", &v, depth + 1, out);
                    indent(depth, out);
                    out.push_str("}\n");
                }
            }
        }
    }
    let mut unknown: Vec<(u32, UnknownValueRef)> = msg.unknown_fields_dyn().iter().collect();
    unknown.sort_by_key(|(n, _)| *n);
    for (n, v) in unknown {
        indent(depth, out);
        let _ = write!(out, "{n}: ");
        match v {
            UnknownValueRef::Varint(x) => {
                let _ = write!(out, "{x}");
            }
            UnknownValueRef::Fixed32(x) => {
                let _ = write!(out, "0x{x:08x}");
            }
            UnknownValueRef::Fixed64(x) => {
                let _ = write!(out, "0x{x:016x}");
            }
            UnknownValueRef::LengthDelimited(b) => quote_to(b, false, out),
        }
        out.push('\n');
    }
}

fn print_field(name: &str, v: &ReflectValueRef, depth: usize, out: &mut String) {
    indent(depth, out);
    out.push_str(name);
    match v {
        ReflectValueRef::Message(m) => {
            out.push_str(" {\n");
            print_message(&**m, depth + 1, out);
            indent(depth, out);
            out.push('}');
        }
        _ => {
            out.push_str(": ");
            print_scalar(v, out);
        }
    }
    out.push('\n');
}

fn print_scalar(v: &ReflectValueRef, out: &mut String) {
    let _ = match v {
        ReflectValueRef::U32(x) => write!(out, "{x}"),
        ReflectValueRef::U64(x) => write!(out, "{x}"),
        ReflectValueRef::I32(x) => write!(out, "{x}"),
        ReflectValueRef::I64(x) => write!(out, "{x}"),
        ReflectValueRef::Bool(x) => write!(out, "{x}"),
        ReflectValueRef::F32(x) => {
            push_f32(*x, out);
            Ok(())
        }
        ReflectValueRef::F64(x) => {
            push_f64(*x, out);
            Ok(())
        }
        ReflectValueRef::String(s) => {
            quote_to(s.as_bytes(), true, out);
            Ok(())
        }
        ReflectValueRef::Bytes(b) => {
            quote_to(b, false, out);
            Ok(())
        }
        ReflectValueRef::Enum(d, n) => match d.value_by_number(*n) {
            Some(e) => write!(out, "{}", e.name()),
            None => write!(out, "{n}"),
        },
        // Messages are handled by `print_field`.
        ReflectValueRef::Message(_) => Ok(()),
    };
}

// ------------------------------------------------------------------------------------------
// Tokenizer
// ------------------------------------------------------------------------------------------

/// A lexical token. Numbers keep their text so floats can be parsed with correct rounding.
#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    Ident(&'a str),
    /// An integer literal (decimal, `0x` hex or leading-`0` octal), as written.
    Int(&'a str),
    /// A float literal (has `.`, an exponent or an `f` suffix), as written.
    Float(&'a str),
    /// One quoted literal, already unescaped.
    Str(Vec<u8>),
    Sym(u8),
    Eof,
}

impl Tok<'_> {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("identifier `{s}`"),
            Tok::Int(s) | Tok::Float(s) => format!("number `{s}`"),
            Tok::Str(_) => "a string".to_string(),
            Tok::Sym(c) if c.is_ascii_graphic() => format!("`{}`", *c as char),
            Tok::Sym(c) => format!("byte 0x{c:02x}"),
            Tok::Eof => "end of input".to_string(),
        }
    }
}

struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    /// Start offset of the most recently returned token (for error locations).
    tok_start: usize,
    peeked: Option<(Tok<'a>, usize, usize)>,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a [u8]) -> Self {
        Lexer {
            src,
            pos: 0,
            tok_start: 0,
            peeked: None,
        }
    }

    fn error_at(&self, offset: usize, msg: impl Into<String>) -> TextError {
        let offset = offset.min(self.src.len());
        let before = &self.src[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        TextError {
            line,
            column: offset - line_start + 1,
            msg: msg.into(),
        }
    }

    /// An error located at the last token returned by `next`/`peek`.
    fn error(&self, msg: impl Into<String>) -> TextError {
        let at = match &self.peeked {
            Some((_, start, _)) => *start,
            None => self.tok_start,
        };
        self.error_at(at, msg)
    }

    fn skip_space(&mut self) {
        while let Some(&b) = self.src.get(self.pos) {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => self.pos += 1,
                b'#' => {
                    while let Some(&c) = self.src.get(self.pos) {
                        self.pos += 1;
                        if c == b'\n' {
                            break;
                        }
                    }
                }
                _ => break,
            }
        }
    }

    fn peek(&mut self) -> Result<&Tok<'a>, TextError> {
        if self.peeked.is_none() {
            let saved = self.pos;
            let tok = self.lex()?;
            let start = self.tok_start;
            let end = self.pos;
            self.pos = saved;
            self.peeked = Some((tok, start, end));
        }
        match &self.peeked {
            Some((t, _, _)) => Ok(t),
            None => Err(self.error("internal lexer error")),
        }
    }

    fn next(&mut self) -> Result<Tok<'a>, TextError> {
        if let Some((tok, start, end)) = self.peeked.take() {
            self.tok_start = start;
            self.pos = end;
            return Ok(tok);
        }
        self.lex()
    }

    fn lex(&mut self) -> Result<Tok<'a>, TextError> {
        self.skip_space();
        self.tok_start = self.pos;
        let Some(&b) = self.src.get(self.pos) else {
            return Ok(Tok::Eof);
        };
        if b.is_ascii_alphabetic() || b == b'_' {
            let start = self.pos;
            while self
                .src
                .get(self.pos)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
            {
                self.pos += 1;
            }
            let s = ascii_str(&self.src[start..self.pos]);
            return Ok(Tok::Ident(s));
        }
        let next_is_digit = self.src.get(self.pos + 1).is_some_and(u8::is_ascii_digit);
        if b.is_ascii_digit() || (b == b'.' && next_is_digit) {
            return Ok(self.lex_number());
        }
        if b == b'"' || b == b'\'' {
            return self.lex_string(b).map(Tok::Str);
        }
        self.pos += 1;
        Ok(Tok::Sym(b))
    }

    fn lex_number(&mut self) -> Tok<'a> {
        let start = self.pos;
        let hex = self.src[start..].len() >= 2
            && self.src[start] == b'0'
            && (self.src[start + 1] == b'x' || self.src[start + 1] == b'X');
        while let Some(&c) = self.src.get(self.pos) {
            let exp_sign = !hex
                && (c == b'+' || c == b'-')
                && self.pos > start
                && matches!(self.src[self.pos - 1], b'e' | b'E');
            if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || exp_sign {
                self.pos += 1;
            } else {
                break;
            }
        }
        let text = ascii_str(&self.src[start..self.pos]);
        let is_float = !hex
            && text
                .bytes()
                .any(|c| matches!(c, b'.' | b'e' | b'E' | b'f' | b'F'));
        if is_float {
            Tok::Float(text)
        } else {
            Tok::Int(text)
        }
    }

    fn lex_string(&mut self, quote: u8) -> Result<Vec<u8>, TextError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.src.get(self.pos) else {
                return Err(self.error_at(open, "string literal is not closed"));
            };
            self.pos += 1;
            match c {
                _ if c == quote => return Ok(out),
                b'\n' => return Err(self.error_at(open, "newline inside a string literal")),
                b'\\' => self.lex_escape(&mut out)?,
                _ => out.push(c),
            }
        }
    }

    fn take_digits(&mut self, max: usize, radix: u32) -> u32 {
        let mut value = 0u32;
        let mut n = 0;
        while n < max {
            let Some(d) = self
                .src
                .get(self.pos)
                .and_then(|&c| (c as char).to_digit(radix))
            else {
                break;
            };
            value = value * radix + d;
            self.pos += 1;
            n += 1;
        }
        value
    }

    fn lex_escape(&mut self, out: &mut Vec<u8>) -> Result<(), TextError> {
        let at = self.pos - 1;
        let Some(&c) = self.src.get(self.pos) else {
            return Err(self.error_at(at, "string literal ends inside an escape"));
        };
        self.pos += 1;
        match c {
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'\\' | b'\'' | b'"' | b'?' => out.push(c),
            b'0'..=b'7' => {
                self.pos -= 1;
                let v = self.take_digits(3, 8);
                if v > 0xff {
                    return Err(self.error_at(at, format!("octal escape \\{v:o} is above \\377")));
                }
                out.push(v as u8);
            }
            b'x' | b'X' => {
                let before = self.pos;
                let v = self.take_digits(2, 16);
                if self.pos == before {
                    return Err(self.error_at(at, "`\\x` escape without hex digits"));
                }
                out.push(v as u8);
            }
            b'u' | b'U' => {
                let want = if c == b'u' { 4 } else { 8 };
                let before = self.pos;
                let v = self.take_digits(want, 16);
                if self.pos - before != want {
                    return Err(self.error_at(
                        at,
                        format!("`\\{}` escape needs {want} hex digits", c as char),
                    ));
                }
                let ch = char::from_u32(v).ok_or_else(|| {
                    self.error_at(
                        at,
                        format!("`\\{}{v:x}` is not a Unicode scalar value", c as char),
                    )
                })?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
            _ => return Err(self.error_at(at, format!("unknown escape `\\{}`", c.escape_ascii()))),
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// Parsing
// ------------------------------------------------------------------------------------------

/// Parses a message of type `M` from protobuf text format. The input is bytes so that quoted
/// `bytes` values may hold raw non-UTF-8 data; the rest must be ASCII syntax.
pub fn parse<M: MessageFull>(input: &[u8]) -> Result<M, TextError> {
    let mut msg = M::new();
    merge_dyn(&mut msg, input)?;
    Ok(msg)
}

/// Merges text-format fields from `input` into `msg`: repeated fields are appended to,
/// singular fields overwritten. A singular field given twice in the text is an error, and
/// required fields are checked at the end of every message.
pub fn merge_dyn(msg: &mut dyn MessageDyn, input: &[u8]) -> Result<(), TextError> {
    // A UTF-8 byte-order mark (some editors add one) is not part of the syntax.
    let input = input.strip_prefix(b"\xef\xbb\xbf").unwrap_or(input);
    let mut p = Parser {
        lex: Lexer::new(input),
    };
    p.message_body(msg, None, 0)?;
    Ok(())
}

struct Parser<'a> {
    lex: Lexer<'a>,
}

/// Integer literal parsed to magnitude and sign.
struct IntLit {
    negative: bool,
    magnitude: u64,
}

impl Parser<'_> {
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, TextError> {
        Err(self.lex.error(msg))
    }

    fn expect_sym(&mut self, sym: u8, context: &str) -> Result<(), TextError> {
        let t = self.lex.next()?;
        if t == Tok::Sym(sym) {
            Ok(())
        } else {
            self.err(format!(
                "expected `{}` {context}, found {}",
                sym as char,
                t.describe()
            ))
        }
    }

    fn eat_sym(&mut self, sym: u8) -> Result<bool, TextError> {
        if *self.lex.peek()? == Tok::Sym(sym) {
            self.lex.next()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Parses fields until `close` (or end of input when `close` is `None`), then checks the
    /// message's required fields.
    fn message_body(
        &mut self,
        msg: &mut dyn MessageDyn,
        close: Option<u8>,
        depth: usize,
    ) -> Result<(), TextError> {
        if depth > MAX_DEPTH {
            return self.err(format!("messages nested deeper than {MAX_DEPTH} levels"));
        }
        let d = msg.descriptor_dyn();
        let mut seen: Vec<i32> = Vec::new();
        loop {
            let t = self.lex.peek()?.clone();
            match (&t, close) {
                (Tok::Eof, None) => break,
                (Tok::Eof, Some(c)) => {
                    return self.err(format!(
                        "end of input inside message `{}`: missing `{}`",
                        d.full_name(),
                        c as char
                    ))
                }
                (Tok::Sym(s), Some(c)) if *s == c => {
                    self.lex.next()?;
                    break;
                }
                _ => {}
            }
            self.lex.next()?;
            match t {
                Tok::Ident(name) => {
                    let Some(f) = d.field_by_name(name) else {
                        return self.err(format!(
                            "message `{}` has no field named `{name}`",
                            d.full_name()
                        ));
                    };
                    if !f.is_repeated_or_map() {
                        if seen.contains(&f.number()) {
                            return self.err(format!(
                                "field `{name}` of `{}` is set more than once",
                                d.full_name()
                            ));
                        }
                        seen.push(f.number());
                    }
                    self.field_value(msg, &f, depth)?;
                }
                Tok::Int(text) => self.unknown_field(msg, text)?,
                Tok::Sym(b'[') => {
                    return self.err("extension and Any fields (`[...]`) are not supported")
                }
                other => {
                    return self.err(format!("expected a field name, found {}", other.describe()))
                }
            }
            // Optional separator.
            if !self.eat_sym(b';')? {
                self.eat_sym(b',')?;
            }
        }
        for f in d.fields() {
            if f.is_required() && !f.has_field(msg) {
                return self.err(format!(
                    "message `{}` is missing required field `{}`",
                    d.full_name(),
                    f.name()
                ));
            }
        }
        Ok(())
    }

    fn unknown_field(&mut self, msg: &mut dyn MessageDyn, text: &str) -> Result<(), TextError> {
        let number = match text.parse::<u32>() {
            Ok(n) if (1..=536_870_911).contains(&n) => n,
            _ => return self.err(format!("`{text}` is not a valid field number")),
        };
        // A number always means an unknown field, even when it is a known field's number:
        // the printer writes one only for a value kept as unknown (e.g. a wire type that
        // does not match the field's), and reading it back must give that message again.
        self.expect_sym(b':', "after an unknown field number")?;
        let t = self.lex.next()?;
        match t {
            Tok::Str(mut bytes) => {
                self.more_strings(&mut bytes)?;
                msg.mut_unknown_fields_dyn()
                    .add_length_delimited(number, bytes);
            }
            Tok::Int(lit) => {
                let v = self.int_magnitude(lit)?;
                let hex_digits = lit.len().saturating_sub(2);
                let is_hex = lit.starts_with("0x") || lit.starts_with("0X");
                let uf = msg.mut_unknown_fields_dyn();
                if is_hex && hex_digits == 8 {
                    uf.add_fixed32(number, v as u32);
                } else if is_hex && hex_digits == 16 {
                    uf.add_fixed64(number, v);
                } else {
                    uf.add_varint(number, v);
                }
            }
            other => {
                return self.err(format!(
                    "unknown field {number} needs an unsigned integer or a string, found {}",
                    other.describe()
                ))
            }
        }
        Ok(())
    }

    fn field_value(
        &mut self,
        msg: &mut dyn MessageDyn,
        f: &FieldDescriptor,
        depth: usize,
    ) -> Result<(), TextError> {
        match f.runtime_field_type() {
            RuntimeFieldType::Singular(t) => {
                let v = self.value_after_name(&t, f, depth)?;
                f.set_singular_field(msg, v);
            }
            RuntimeFieldType::Repeated(t) => {
                let is_msg = matches!(t, RuntimeType::Message(_));
                let colon = self.eat_sym(b':')?;
                if !colon && !is_msg {
                    return self.err(format!("expected `:` after field `{}`", f.name()));
                }
                if self.eat_sym(b'[')? {
                    if !self.eat_sym(b']')? {
                        loop {
                            let v = self.value(&t, f, depth)?;
                            f.mut_repeated(msg).push(v);
                            if self.eat_sym(b']')? {
                                break;
                            }
                            self.expect_sym(b',', "between list elements")?;
                        }
                    }
                } else {
                    let v = self.value(&t, f, depth)?;
                    f.mut_repeated(msg).push(v);
                }
            }
            RuntimeFieldType::Map(kt, vt) => {
                self.eat_sym(b':')?;
                let close = match self.lex.next()? {
                    Tok::Sym(b'{') => b'}',
                    Tok::Sym(b'<') => b'>',
                    other => {
                        return self.err(format!(
                            "expected `{{` to open map entry `{}`, found {}",
                            f.name(),
                            other.describe()
                        ))
                    }
                };
                let mut key = None;
                let mut value = None;
                while !self.eat_sym(close)? {
                    let (slot, t) = match self.lex.next()? {
                        Tok::Ident("key") => (&mut key, &kt),
                        Tok::Ident("value") => (&mut value, &vt),
                        other => {
                            return self.err(format!(
                                "expected `key` or `value` in map entry, found {}",
                                other.describe()
                            ))
                        }
                    };
                    if slot.is_some() {
                        return self.err("map entry sets `key` or `value` twice");
                    }
                    *slot = Some(self.value_after_name(t, f, depth)?);
                    if !self.eat_sym(b';')? {
                        self.eat_sym(b',')?;
                    }
                }
                let key = key.unwrap_or_else(|| default_value(&kt));
                let value = value.unwrap_or_else(|| default_value(&vt));
                f.mut_map(msg).insert(key, value);
            }
        }
        Ok(())
    }

    /// Reads `: scalar` or `[:] { message }` after a field name.
    fn value_after_name(
        &mut self,
        t: &RuntimeType,
        f: &FieldDescriptor,
        depth: usize,
    ) -> Result<ReflectValueBox, TextError> {
        let colon = self.eat_sym(b':')?;
        if !colon && !matches!(t, RuntimeType::Message(_)) {
            return self.err(format!("expected `:` after field `{}`", f.name()));
        }
        self.value(t, f, depth)
    }

    fn value(
        &mut self,
        t: &RuntimeType,
        f: &FieldDescriptor,
        depth: usize,
    ) -> Result<ReflectValueBox, TextError> {
        Ok(match t {
            RuntimeType::Message(md) => {
                let close = match self.lex.next()? {
                    Tok::Sym(b'{') => b'}',
                    Tok::Sym(b'<') => b'>',
                    other => {
                        return self.err(format!(
                            "expected `{{` to open message field `{}`, found {}",
                            f.name(),
                            other.describe()
                        ))
                    }
                };
                let mut m = md.new_instance();
                self.message_body(&mut *m, Some(close), depth + 1)?;
                ReflectValueBox::Message(m)
            }
            RuntimeType::I32 => {
                let v = self.signed(f, i32::MIN as i64, i32::MAX as i64)?;
                ReflectValueBox::I32(v as i32)
            }
            RuntimeType::I64 => ReflectValueBox::I64(self.signed(f, i64::MIN, i64::MAX)?),
            RuntimeType::U32 => ReflectValueBox::U32(self.unsigned(f, u32::MAX as u64)? as u32),
            RuntimeType::U64 => ReflectValueBox::U64(self.unsigned(f, u64::MAX)?),
            RuntimeType::F32 => ReflectValueBox::F32(self.float(f, true)? as f32),
            RuntimeType::F64 => ReflectValueBox::F64(self.float(f, false)?),
            RuntimeType::Bool => ReflectValueBox::Bool(self.boolean(f)?),
            RuntimeType::String => {
                let bytes = self.string(f)?;
                match String::from_utf8(bytes) {
                    Ok(s) => ReflectValueBox::String(s),
                    Err(_) => {
                        return self.err(format!(
                        "string field `{}` must be valid UTF-8 (use a bytes field for raw data)",
                        f.name()
                    ))
                    }
                }
            }
            RuntimeType::VecU8 => ReflectValueBox::Bytes(self.string(f)?),
            RuntimeType::Enum(ed) => match self.lex.next()? {
                Tok::Ident(name) => match ed.value_by_name(name) {
                    Some(v) => ReflectValueBox::Enum(ed.clone(), v.value()),
                    None => {
                        return self.err(format!(
                            "`{name}` is not a value of enum `{}`",
                            ed.full_name()
                        ))
                    }
                },
                tok => {
                    let lit = self.int_after_sign(tok, f)?;
                    let v = self.checked(lit, i32::MIN as i64, i32::MAX as i64, f)?;
                    ReflectValueBox::Enum(ed.clone(), v as i32)
                }
            },
        })
    }

    fn string(&mut self, f: &FieldDescriptor) -> Result<Vec<u8>, TextError> {
        match self.lex.next()? {
            Tok::Str(mut bytes) => {
                self.more_strings(&mut bytes)?;
                Ok(bytes)
            }
            other => self.err(format!(
                "expected a quoted string for field `{}`, found {}",
                f.name(),
                other.describe()
            )),
        }
    }

    /// Appends adjacent string literals (`"a" "b"` means `"ab"`).
    fn more_strings(&mut self, bytes: &mut Vec<u8>) -> Result<(), TextError> {
        while let Tok::Str(_) = self.lex.peek()? {
            if let Tok::Str(more) = self.lex.next()? {
                bytes.extend_from_slice(&more);
            }
        }
        Ok(())
    }

    fn int_magnitude(&self, lit: &str) -> Result<u64, TextError> {
        let parsed = if let Some(h) = lit.strip_prefix("0x").or_else(|| lit.strip_prefix("0X")) {
            u64::from_str_radix(h, 16)
        } else if lit.len() > 1 && lit.starts_with('0') {
            u64::from_str_radix(&lit[1..], 8)
        } else {
            lit.parse::<u64>()
        };
        parsed.or_else(|e| {
            use std::num::IntErrorKind;
            match e.kind() {
                IntErrorKind::PosOverflow => {
                    self.err(format!("integer `{lit}` does not fit 64 bits"))
                }
                _ => self.err(format!("`{lit}` is not a valid integer")),
            }
        })
    }

    /// Reads an integer literal (with an optional `-`) given its first token.
    fn int_after_sign(&mut self, first: Tok<'_>, f: &FieldDescriptor) -> Result<IntLit, TextError> {
        let (negative, tok) = if first == Tok::Sym(b'-') {
            (true, self.lex.next()?)
        } else {
            (false, first)
        };
        match tok {
            Tok::Int(lit) => Ok(IntLit {
                negative,
                magnitude: self.int_magnitude(lit)?,
            }),
            other => self.err(format!(
                "expected an integer for field `{}`, found {}",
                f.name(),
                other.describe()
            )),
        }
    }

    fn checked(
        &self,
        lit: IntLit,
        min: i64,
        max: i64,
        f: &FieldDescriptor,
    ) -> Result<i64, TextError> {
        let v: i128 = if lit.negative {
            -(lit.magnitude as i128)
        } else {
            lit.magnitude as i128
        };
        if v < min as i128 || v > max as i128 {
            return self.err(format!(
                "{v} is out of range [{min}, {max}] for field `{}`",
                f.name()
            ));
        }
        Ok(v as i64)
    }

    fn signed(&mut self, f: &FieldDescriptor, min: i64, max: i64) -> Result<i64, TextError> {
        let tok = self.lex.next()?;
        let lit = self.int_after_sign(tok, f)?;
        self.checked(lit, min, max, f)
    }

    fn unsigned(&mut self, f: &FieldDescriptor, max: u64) -> Result<u64, TextError> {
        let tok = self.lex.next()?;
        let lit = self.int_after_sign(tok, f)?;
        if lit.negative && lit.magnitude != 0 {
            return self.err(format!(
                "field `{}` is unsigned; a negative value is not allowed",
                f.name()
            ));
        }
        if lit.magnitude > max {
            return self.err(format!(
                "{} is above {max} for field `{}`",
                lit.magnitude,
                f.name()
            ));
        }
        Ok(lit.magnitude)
    }

    /// Reads a float literal. With `single`, the decimal text is rounded straight to `f32`
    /// (returned widened to `f64`, which is exact), avoiding double rounding.
    fn float(&mut self, f: &FieldDescriptor, single: bool) -> Result<f64, TextError> {
        let mut tok = self.lex.next()?;
        let negative = tok == Tok::Sym(b'-');
        if negative {
            tok = self.lex.next()?;
        }
        let magnitude = match tok {
            Tok::Float(text) => self.decimal_float(text, single)?,
            Tok::Int(text) if is_decimal(text) => self.decimal_float(text, single)?,
            Tok::Int(text) => {
                // Hex or octal integer literal written for a float field.
                let v = self.int_magnitude(text)?;
                if single {
                    f64::from(v as f32)
                } else {
                    v as f64
                }
            }
            Tok::Ident(word) => match word.to_ascii_lowercase().as_str() {
                "inf" | "infinity" => f64::INFINITY,
                "nan" => f64::NAN,
                _ => {
                    return self.err(format!(
                        "expected a number for float field `{}`, found {}",
                        f.name(),
                        tok.describe()
                    ))
                }
            },
            other => {
                return self.err(format!(
                    "expected a number for float field `{}`, found {}",
                    f.name(),
                    other.describe()
                ))
            }
        };
        Ok(if negative { -magnitude } else { magnitude })
    }

    /// Parses a decimal literal (optional `f` suffix) with correct rounding to the field's
    /// precision; integers too long for 64 bits are fine here.
    fn decimal_float(&self, text: &str, single: bool) -> Result<f64, TextError> {
        let body = text.strip_suffix(['f', 'F']).unwrap_or(text);
        let parsed = if single {
            body.parse::<f32>().map(f64::from).ok()
        } else {
            body.parse::<f64>().ok()
        };
        match parsed {
            Some(v) => Ok(v),
            None => self.err(format!("`{text}` is not a valid number")),
        }
    }

    fn boolean(&mut self, f: &FieldDescriptor) -> Result<bool, TextError> {
        let tok = self.lex.next()?;
        match &tok {
            Tok::Ident(w) if matches!(*w, "true" | "True" | "t") => Ok(true),
            Tok::Ident(w) if matches!(*w, "false" | "False" | "f") => Ok(false),
            Tok::Int(w) if *w == "1" => Ok(true),
            Tok::Int(w) if *w == "0" => Ok(false),
            _ => self.err(format!(
                "expected true or false for field `{}`, found {}",
                f.name(),
                tok.describe()
            )),
        }
    }
}

/// Views a run of ASCII bytes (an identifier or a number) as `&str`.
fn ascii_str(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// True for a plain decimal integer literal (not hex, not leading-zero octal).
fn is_decimal(lit: &str) -> bool {
    lit == "0" || (!lit.starts_with('0') && lit.bytes().all(|c| c.is_ascii_digit()))
}

fn default_value(t: &RuntimeType) -> ReflectValueBox {
    match t {
        RuntimeType::I32 => ReflectValueBox::I32(0),
        RuntimeType::I64 => ReflectValueBox::I64(0),
        RuntimeType::U32 => ReflectValueBox::U32(0),
        RuntimeType::U64 => ReflectValueBox::U64(0),
        RuntimeType::F32 => ReflectValueBox::F32(0.0),
        RuntimeType::F64 => ReflectValueBox::F64(0.0),
        RuntimeType::Bool => ReflectValueBox::Bool(false),
        RuntimeType::String => ReflectValueBox::String(String::new()),
        RuntimeType::VecU8 => ReflectValueBox::Bytes(Vec::new()),
        RuntimeType::Enum(e) => ReflectValueBox::Enum(e.clone(), e.default_value().value()),
        RuntimeType::Message(m) => ReflectValueBox::Message(m.new_instance()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{tensor_proto::DataType, Argument, NetDef, QTensorProto, TensorProto};
    use protobuf::Message;

    /// Deterministic xorshift64 generator for sampling bit patterns.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn parse_arg(text: &str) -> Argument {
        match parse::<Argument>(text.as_bytes()) {
            Ok(a) => a,
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    fn err_of<M: MessageFull>(text: &str) -> TextError {
        match parse::<M>(text.as_bytes()) {
            Ok(_) => panic!("{text:?} should not parse"),
            Err(e) => e,
        }
    }

    #[test]
    fn float_formatting_hand_values() {
        assert_eq!(format_f32(f32::MAX), "3.4028235e38");
        assert_eq!(format_f32(-f32::MAX), "-3.4028235e38");
        assert_eq!(format_f32(1e-45), "1e-45");
        assert_eq!(format_f32(-0.0), "-0");
        assert_eq!(format_f32(0.0), "0");
        assert_eq!(format_f32(0.5), "0.5");
        assert_eq!(format_f32(1e-5), "1e-5");
        assert_eq!(format_f32(0.0207874), "0.0207874");
        assert_eq!(format_f32(123456790.0), "123456790");
        assert_eq!(format_f32(1e9), "1e9");
        assert_eq!(format_f32(f32::INFINITY), "inf");
        assert_eq!(format_f32(f32::NEG_INFINITY), "-inf");
        assert_eq!(format_f32(f32::NAN), "nan");
        assert_eq!(format_f32(-f32::NAN), "-nan");
        assert_eq!(format_f64(f64::MAX), "1.7976931348623157e308");
        assert_eq!(format_f64(5e-324), "5e-324");
        assert_eq!(format_f64(0.1), "0.1");
    }

    #[test]
    fn f32_bits_survive_print_and_parse() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut bits: Vec<u32> = (0..100_000).map(|_| rng.next() as u32).collect();
        // Edges: zeros, smallest/largest subnormals, smallest normal, max, one, inf.
        bits.extend([
            0x0000_0000,
            0x8000_0000,
            0x0000_0001,
            0x8000_0001,
            0x007f_ffff,
            0x0080_0000,
            0x7f7f_ffff,
            0xff7f_ffff,
            0x3f80_0000,
            0x3f80_0001,
            0x7f80_0000,
            0xff80_0000,
        ]);
        let mut text = String::new();
        for &b in &bits {
            text.push_str("floats: ");
            text.push_str(&format_f32(f32::from_bits(b)));
            text.push('\n');
        }
        let arg = parse_arg(&text);
        assert_eq!(arg.floats.len(), bits.len());
        for (&b, &v) in bits.iter().zip(&arg.floats) {
            let orig = f32::from_bits(b);
            if orig.is_nan() {
                assert!(v.is_nan(), "{b:#x}");
                assert_eq!(v.is_sign_negative(), orig.is_sign_negative(), "{b:#x}");
            } else {
                assert_eq!(v.to_bits(), b, "{b:#x} printed {}", format_f32(orig));
            }
        }
    }

    #[test]
    fn f64_bits_survive_print_and_parse() {
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        let mut bits: Vec<u64> = (0..20_000).map(|_| rng.next()).collect();
        bits.extend([
            0,
            1 << 63,
            1,
            f64::MAX.to_bits(),
            f64::MIN_POSITIVE.to_bits(),
        ]);
        let mut t = TensorProto::new();
        t.double_data = bits.iter().map(|&b| f64::from_bits(b)).collect();
        let back: TensorProto = match parse(print(&t).as_bytes()) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        };
        for (&b, &v) in bits.iter().zip(&back.double_data) {
            if f64::from_bits(b).is_nan() {
                assert!(v.is_nan());
            } else {
                assert_eq!(v.to_bits(), b);
            }
        }
        assert_eq!(back.double_data.len(), bits.len());
    }

    #[test]
    fn f32_is_rounded_once_not_via_f64() {
        // Just below the midpoint between 1+2^-23 and 1+2^-22. Correct rounding gives
        // 1+2^-23 (0x3f800001); rounding to f64 first lands exactly on the midpoint, and the
        // tie then goes to the even neighbour 0x3f800002.
        let a = parse_arg("f: 1.00000017881393432617187499");
        assert_eq!(a.f().to_bits(), 0x3f80_0001);
        let a = parse_arg("f: 1.000000178813934326171875000001");
        assert_eq!(a.f().to_bits(), 0x3f80_0002);
    }

    #[test]
    fn zoo_and_foreign_float_spellings() {
        // Zoo pbtxt epsilon: 1.00000006569e-05 (12 significant digits, as C++ printed it) is
        // float32 0x3727c5ad, one ulp above float32(1e-5) = 0x3727c5ac.
        assert_eq!(1e-5f32.to_bits(), 0x3727_c5ac);
        assert_eq!(parse_arg("f: 1.00000006569e-05").f().to_bits(), 0x3727_c5ad);
        assert_eq!(parse_arg("f: 9.99999974738e-06").f().to_bits(), 0x3727_c5ac);
        // rust-protobuf 3.7 prints f32::MAX as this integer literal.
        let a = parse_arg("f: 340282346638528859811704183484516925440");
        assert_eq!(a.f().to_bits(), f32::MAX.to_bits());
        let a = parse_arg("f: -340282350000000000000000000000000000000");
        assert_eq!(a.f().to_bits(), (-f32::MAX).to_bits());
        assert_eq!(parse_arg("f: 2.5f").f(), 2.5);
        assert_eq!(parse_arg("f: .25").f(), 0.25);
        assert_eq!(parse_arg("f: 7").f(), 7.0);
        assert_eq!(parse_arg("f: 0x10").f(), 16.0);
        assert_eq!(parse_arg("f: -Infinity").f(), f32::NEG_INFINITY);
        assert_eq!(parse_arg("f: INF").f(), f32::INFINITY);
        assert!(parse_arg("f: NaN").f().is_nan());
        assert!(parse_arg("f: -nan").f().is_sign_negative());
        assert_eq!(parse_arg("f: -0").f().to_bits(), 0x8000_0000);
        assert_eq!(parse_arg("f: 1e39").f(), f32::INFINITY);
        assert_eq!(parse_arg("f: 1e-46").f().to_bits(), 0);
    }

    #[test]
    fn bytes_escapes() {
        assert_eq!(parse_arg(r#"s: "\1\1\1\1""#).s(), [1, 1, 1, 1]);
        assert_eq!(parse_arg(r#"s: "\x7f\x80""#).s(), [0x7f, 0x80]);
        assert_eq!(parse_arg(r#"s: "\0012""#).s(), [1, b'2']);
        assert_eq!(parse_arg(r#"s: "\377\x0\xAb""#).s(), [0xff, 0, 0xab]);
        assert_eq!(parse_arg(r#"s: 'it''s' "\"q\"""#).s(), b"its\"q\"");
        assert_eq!(
            parse_arg(r#"s: "\a\b\f\n\r\t\v\\\?\'""#).s(),
            [7, 8, 12, 10, 13, 9, 11, b'\\', b'?', b'\'']
        );
        assert_eq!(parse_arg(r#"s: "\u00e9\U0001F600""#).s(), "é😀".as_bytes());
        let mut a = Argument::new();
        a.set_s((0..=255u8).collect());
        a.strings = vec![vec![0x7f, 0x80], b"\\\"'\n".to_vec(), Vec::new()];
        let text = print(&a);
        assert!(text.contains(r#"s: "\000\001\002"#), "{text}");
        assert!(text.contains(r#"strings: "\177\200""#), "{text}");
        assert_eq!(parse_arg(&text), a);
    }

    #[test]
    fn strings_keep_utf8_and_reject_invalid() {
        let mut n = NetDef::new();
        n.set_name("données/é\t\"x\"".to_string());
        let text = print(&n);
        assert_eq!(text, "name: \"données/é\\t\\\"x\\\"\"\n");
        assert_eq!(parse::<NetDef>(text.as_bytes()), Ok(n));
        let e = err_of::<NetDef>(r#"name: "\377""#);
        assert!(e.msg.contains("UTF-8"), "{e}");
        // Raw non-UTF-8 bytes are fine inside a bytes literal.
        let a: Argument = parse(b"s: \"\xff\xfe\"").unwrap_or_default();
        assert_eq!(a.s(), [0xff, 0xfe]);
    }

    #[test]
    fn printed_layout() {
        let mut n = NetDef::new();
        n.set_name("n".into());
        n.external_input = vec!["data".into()];
        let mut op = crate::OperatorDef::new();
        op.set_type("Relu".into());
        op.input = vec!["data".into()];
        let mut arg = Argument::new();
        arg.set_name("ints".into());
        arg.ints = vec![-1, 2];
        op.arg.push(arg);
        n.op.push(op);
        let expected = "name: \"n\"\nop {\n  input: \"data\"\n  type: \"Relu\"\n  arg {\n    \
                        name: \"ints\"\n    ints: -1\n    ints: 2\n  }\n}\nexternal_input: \"data\"\n";
        assert_eq!(print(&n), expected);
    }

    #[test]
    fn syntax_variants() {
        let text = "# leading comment\n\
                    name: 'x', type: \"dag\"; # trailing comment\n\
                    op < type: \"A\" arg: { name: \"k\" ints: [1, 0x10, 010, -5] } >\n\
                    op { arg [{ i: -9223372036854775808 }, { f: 1 }] }\n\
                    op { is_gradient_op: t } op { is_gradient_op: 0 } op { is_gradient_op: True }\n\
                    num_workers: -2147483648\n\
                    external_input: []\n\
                    device_option { device_type: 1 random_seed: 4294967295 }";
        let n: NetDef = match parse(text.as_bytes()) {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(n.name(), "x");
        assert_eq!(n.type_(), "dag");
        assert_eq!(n.op.len(), 5);
        assert_eq!(n.op[0].type_(), "A");
        assert_eq!(n.op[0].arg[0].ints, [1, 16, 8, -5]);
        assert_eq!(n.op[1].arg[0].i(), i64::MIN);
        assert_eq!(n.op[1].arg[1].f(), 1.0);
        assert!(n.op[2].is_gradient_op());
        assert_eq!(n.op[3].is_gradient_op, Some(false));
        assert!(n.op[4].is_gradient_op());
        assert_eq!(n.num_workers(), i32::MIN);
        assert!(n.external_input.is_empty());
        assert_eq!(n.device_option.device_type(), 1);
        assert_eq!(n.device_option.random_seed(), u32::MAX);
    }

    #[test]
    fn enums_by_name_and_number() {
        let t: TensorProto = parse(b"data_type: INT8").unwrap_or_default();
        assert_eq!(t.data_type(), DataType::INT8);
        let t: TensorProto = parse(b"data_type: 13").unwrap_or_default();
        assert_eq!(t.data_type(), DataType::DOUBLE);
        // A number outside the enum survives a round trip.
        let t: TensorProto = parse(b"data_type: 11").unwrap_or_default();
        assert_eq!(t.data_type.map(|e| e.value()), Some(11));
        assert_eq!(print(&t), "data_type: 11\n");
        assert_eq!(
            print(&TensorProto {
                data_type: Some(DataType::UINT8.into()),
                ..Default::default()
            }),
            "data_type: UINT8\n"
        );
        let e = err_of::<TensorProto>("data_type: FLOAT32");
        assert!(e.msg.contains("`FLOAT32` is not a value of enum"), "{e}");
    }

    #[test]
    fn error_locations_and_messages() {
        let e = err_of::<NetDef>("name: \"a\"\n  nme: \"b\"");
        assert_eq!((e.line, e.column), (2, 3));
        assert!(e.msg.contains("no field named `nme`"), "{e}");
        let e = err_of::<NetDef>("name \"a\"");
        assert_eq!((e.line, e.column), (1, 6));
        assert!(e.msg.contains("expected `:`"), "{e}");
        let e = err_of::<NetDef>("op {\n type: \"x\"\n");
        assert!(e.msg.contains("missing `}`"), "{e}");
        let e = err_of::<NetDef>("name: \"abc");
        assert!(e.msg.contains("not closed"), "{e}");
        let e = err_of::<Argument>(r#"s: "\q""#);
        assert!(e.msg.contains("unknown escape"), "{e}");
        let e = err_of::<NetDef>("name: \"a\" name: \"b\"");
        assert!(e.msg.contains("more than once"), "{e}");
        let e = err_of::<NetDef>("num_workers: 2147483648");
        assert!(e.msg.contains("out of range"), "{e}");
        let e = err_of::<Argument>("i: 99999999999999999999");
        assert!(e.msg.contains("64 bits"), "{e}");
        let e = err_of::<Argument>("i: 1.5");
        assert!(e.msg.contains("expected an integer"), "{e}");
        let e = err_of::<crate::DeviceOption>("random_seed: -1");
        assert!(e.msg.contains("unsigned"), "{e}");
        let e = err_of::<Argument>("f: abc");
        assert!(e.msg.contains("expected a number"), "{e}");
        let e = err_of::<Argument>("f: 1.2.3");
        assert!(e.msg.contains("not a valid number"), "{e}");
        let e = err_of::<NetDef>("[ext.foo]: 1");
        assert!(e.msg.contains("not supported"), "{e}");
        let e = err_of::<NetDef>("\u{1}");
        assert!(e.msg.contains("byte 0x01"), "{e}");
        let e = err_of::<QTensorProto>("precision: 8 scale: 1 bias: 0");
        assert!(e.msg.contains("missing required field `is_signed`"), "{e}");
        let e = err_of::<NetDef>("op { arg { qtensors { precision: 8 } } }");
        assert!(
            e.msg
                .contains("`caffe2.QTensorProto` is missing required field `scale`"),
            "{e}"
        );
        assert_eq!((e.line, e.column), (1, 36));
    }

    #[test]
    fn nesting_limit() {
        // Argument.n is a NetDef and NetDef.arg an Argument: two levels per repetition.
        let nest = |pairs: usize| format!("{}{}", "n { arg { ".repeat(pairs), "} } ".repeat(pairs));
        assert!(parse::<Argument>(nest(MAX_DEPTH / 2).as_bytes()).is_ok());
        let e = err_of::<Argument>(&nest(MAX_DEPTH / 2 + 1));
        assert!(e.msg.contains("nested deeper"), "{e}");
        let e = err_of::<Argument>(&nest(5000));
        assert!(e.msg.contains("nested deeper"), "{e}");
    }

    #[test]
    fn unknown_fields_round_trip() {
        // NetDef with unknown field 9 (varint 300), 20 (fixed32), 21 (fixed64), 22 (bytes).
        let mut wire = vec![0x0a, 0x01, b'n', 0x48, 0xac, 0x02];
        wire.extend([0xa5, 0x01, 0x78, 0x56, 0x34, 0x12]);
        wire.extend([0xa9, 0x01, 1, 2, 3, 4, 5, 6, 7, 8]);
        wire.extend([0xb2, 0x01, 0x02, 0x00, 0xff]);
        let n = match NetDef::parse_from_bytes(&wire) {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        };
        let text = print(&n);
        assert_eq!(
            text,
            "name: \"n\"\n9: 300\n20: 0x12345678\n21: 0x0807060504030201\n22: \"\\000\\377\"\n"
        );
        let back: NetDef = match parse(text.as_bytes()) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(back, n);
        // A known field's number is an unknown field with that number (what the printer
        // writes for a value whose wire type does not match the field).
        let m: NetDef = parse(b"1: \"x\"").unwrap();
        assert!(!m.has_name());
        assert_eq!(
            m.unknown_fields().get(1),
            Some(protobuf::UnknownValueRef::LengthDelimited(b"x"))
        );
    }

    /// Random protobuf wire bytes: fields 1..=12 with every wire type, and for fields 2
    /// (op) and 5 (arg) sometimes a nested message built the same way.
    fn random_wire(r: &mut u64, depth: usize) -> Vec<u8> {
        let mut next = || {
            *r ^= *r << 13;
            *r ^= *r >> 7;
            *r ^= *r << 17;
            *r
        };
        let mut out = Vec::new();
        let varint = |mut v: u64, out: &mut Vec<u8>| loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        };
        for _ in 0..(next() % 6) {
            let field = 1 + next() % 12;
            let wire = [0u64, 1, 2, 5][(next() % 4) as usize];
            varint(field << 3 | wire, &mut out);
            match wire {
                0 => varint(next() % 1000, &mut out),
                1 => out.extend(next().to_le_bytes()),
                5 => out.extend((next() as u32).to_le_bytes()),
                _ => {
                    let body = if depth < 3 && (field == 2 || field == 5) && next() % 2 == 0 {
                        let mut s = next();
                        random_wire(&mut s, depth + 1)
                    } else {
                        let n = (next() % 5) as usize;
                        (0..n).map(|_| (next() % 256) as u8).collect()
                    };
                    varint(body.len() as u64, &mut out);
                    out.extend(body);
                }
            }
        }
        out
    }

    #[test]
    fn whatever_is_printed_parses_back_to_the_same_message() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut parsed = 0;
        for _ in 0..4000 {
            let wire = random_wire(&mut seed, 0);
            let Ok(n) = NetDef::parse_from_bytes(&wire) else {
                continue;
            };
            parsed += 1;
            let text = print(&n);
            let back: NetDef = match parse(text.as_bytes()) {
                Ok(m) => m,
                Err(e) => panic!("{e}\nwire {wire:02x?}\ntext:\n{text}"),
            };
            assert_eq!(back, n, "wire {wire:02x?}\ntext:\n{text}");
        }
        assert!(
            parsed > 1000,
            "only {parsed} of 4000 random messages parsed"
        );
    }

    #[test]
    fn mismatched_wire_type_round_trips() {
        // Fuzz reproducer: op { arg { field 7 (`strings`, bytes) sent as varint 42 } }. The
        // Argument keeps it as unknown field 7; printed as `7: 42`, it must read back.
        let wire = [0x12, 0x04, 0x2a, 0x02, 0x38, 0x2a];
        let n = NetDef::parse_from_bytes(&wire).unwrap();
        let text = print(&n);
        assert!(text.contains("7: 42"), "{text}");
        let back: NetDef = parse(text.as_bytes()).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn map_fields_round_trip() {
        use protobuf::well_known_types::struct_::{value::Kind, Struct, Value};
        let mut s = Struct::new();
        let mut v = Value::new();
        v.kind = Some(Kind::NumberValue(-1.5));
        s.fields.insert("a".into(), v);
        let text = print(&s);
        assert_eq!(
            text,
            "fields {\n  key: \"a\"\n  value {\n    number_value: -1.5\n  }\n}\n"
        );
        assert_eq!(parse::<Struct>(text.as_bytes()), Ok(s));
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        let n: NetDef = parse(b"\xef\xbb\xbfname: \"x\"").unwrap_or_default();
        assert_eq!(n.name(), "x");
    }
}
