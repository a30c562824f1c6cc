//! A protobuf-free view of an operator's arguments (Caffe2 `Argument` list).

use crate::{OpError, OpResult};

/// One argument value, by the field it was stored in.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgValue {
    /// Single float (`f`).
    F(f32),
    /// Single integer (`i`).
    I(i64),
    /// Single bytes/string (`s`).
    S(Vec<u8>),
    /// Repeated floats (`floats`).
    Floats(Vec<f32>),
    /// Repeated integers (`ints`).
    Ints(Vec<i64>),
    /// Repeated bytes/strings (`strings`).
    Strings(Vec<Vec<u8>>),
    /// Nested nets or tensors: kept opaque, ops here never read them.
    Other,
    /// No field set.
    Empty,
}

/// An operator's arguments by name, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args {
    items: Vec<(String, ArgValue)>,
}

impl Args {
    /// No arguments.
    pub fn new() -> Self {
        Args::default()
    }

    /// Adds an argument (builder style).
    pub fn with(mut self, name: &str, value: ArgValue) -> Self {
        self.set(name, value);
        self
    }

    /// Sets an argument, replacing an earlier one of the same name.
    pub fn set(&mut self, name: &str, value: ArgValue) {
        if let Some(slot) = self.items.iter_mut().find(|(n, _)| n == name) {
            slot.1 = value;
        } else {
            self.items.push((name.to_string(), value));
        }
    }

    /// Removes an argument if present.
    pub fn remove(&mut self, name: &str) {
        self.items.retain(|(n, _)| n != name);
    }

    /// All arguments in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ArgValue)> {
        self.items.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// The arguments named `prefix<name>` (as `<name>`) and the others, leaving out the
    /// names in `skip` (how a fused op's arguments split into those of its parts).
    pub fn split_prefix(&self, prefix: &str, skip: &[&str]) -> (Args, Args) {
        let (mut with, mut without) = (Args::new(), Args::new());
        for (name, v) in self.iter() {
            if skip.contains(&name) {
                continue;
            }
            match name.strip_prefix(prefix) {
                Some(n) => with.set(n, v.clone()),
                None => without.set(name, v.clone()),
            }
        }
        (with, without)
    }

    /// The raw value of an argument.
    pub fn get(&self, name: &str) -> Option<&ArgValue> {
        self.items.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// True if the argument is present.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn bad(name: &str, msg: impl Into<String>) -> OpError {
        OpError::BadArg {
            name: name.to_string(),
            msg: msg.into(),
        }
    }

    /// A single integer (field `i`).
    pub fn int(&self, name: &str) -> OpResult<Option<i64>> {
        match self.get(name) {
            None => Ok(None),
            Some(ArgValue::I(v)) => Ok(Some(*v)),
            Some(ArgValue::F(v)) if v.fract() == 0.0 && v.is_finite() => Ok(Some(*v as i64)),
            Some(other) => Err(Self::bad(
                name,
                format!("expected an integer (i), found {other:?}"),
            )),
        }
    }

    /// A single integer with a default.
    pub fn int_or(&self, name: &str, default: i64) -> OpResult<i64> {
        Ok(self.int(name)?.unwrap_or(default))
    }

    /// A single float (field `f`; an integer in `i` is accepted too).
    pub fn float(&self, name: &str) -> OpResult<Option<f32>> {
        match self.get(name) {
            None => Ok(None),
            Some(ArgValue::F(v)) => Ok(Some(*v)),
            Some(ArgValue::I(v)) => Ok(Some(*v as f32)),
            Some(other) => Err(Self::bad(
                name,
                format!("expected a float (f), found {other:?}"),
            )),
        }
    }

    /// A single float with a default.
    pub fn float_or(&self, name: &str, default: f32) -> OpResult<f32> {
        Ok(self.float(name)?.unwrap_or(default))
    }

    /// A single string (field `s`), as UTF-8.
    pub fn string(&self, name: &str) -> OpResult<Option<String>> {
        match self.get(name) {
            None => Ok(None),
            Some(ArgValue::S(b)) => String::from_utf8(b.clone())
                .map(Some)
                .map_err(|_| Self::bad(name, "string is not UTF-8")),
            Some(other) => Err(Self::bad(
                name,
                format!("expected a string (s), found {other:?}"),
            )),
        }
    }

    /// A single string with a default.
    pub fn string_or(&self, name: &str, default: &str) -> OpResult<String> {
        Ok(self.string(name)?.unwrap_or_else(|| default.to_string()))
    }

    /// Raw bytes of a single string argument (field `s`).
    pub fn bytes(&self, name: &str) -> OpResult<Option<&[u8]>> {
        match self.get(name) {
            None => Ok(None),
            Some(ArgValue::S(b)) => Ok(Some(b)),
            Some(other) => Err(Self::bad(
                name,
                format!("expected bytes (s), found {other:?}"),
            )),
        }
    }

    /// Repeated integers (field `ints`). A present argument with no values reads as empty.
    pub fn ints(&self, name: &str) -> OpResult<Option<Vec<i64>>> {
        match self.get(name) {
            None => Ok(None),
            Some(ArgValue::Ints(v)) => Ok(Some(v.clone())),
            Some(ArgValue::Empty) => Ok(Some(Vec::new())),
            Some(other) => Err(Self::bad(
                name,
                format!("expected repeated ints, found {other:?}"),
            )),
        }
    }

    /// Repeated floats (field `floats`).
    pub fn floats(&self, name: &str) -> OpResult<Option<Vec<f32>>> {
        match self.get(name) {
            None => Ok(None),
            Some(ArgValue::Floats(v)) => Ok(Some(v.clone())),
            Some(ArgValue::Empty) => Ok(Some(Vec::new())),
            Some(other) => Err(Self::bad(
                name,
                format!("expected repeated floats, found {other:?}"),
            )),
        }
    }

    /// Repeated strings (field `strings`).
    pub fn strings(&self, name: &str) -> OpResult<Option<Vec<Vec<u8>>>> {
        match self.get(name) {
            None => Ok(None),
            Some(ArgValue::Strings(v)) => Ok(Some(v.clone())),
            Some(ArgValue::Empty) => Ok(Some(Vec::new())),
            Some(other) => Err(Self::bad(
                name,
                format!("expected repeated strings, found {other:?}"),
            )),
        }
    }

    /// A non-negative integer that fits `usize`.
    pub fn usize_or(&self, name: &str, default: usize) -> OpResult<usize> {
        match self.int(name)? {
            None => Ok(default),
            Some(v) if v >= 0 => Ok(v as usize),
            Some(v) => Err(Self::bad(name, format!("must be >= 0, got {v}"))),
        }
    }

    /// A shape given as repeated ints, every entry >= 0.
    pub fn shape(&self, name: &str) -> OpResult<Option<Vec<usize>>> {
        match self.ints(name)? {
            None => Ok(None),
            Some(v) => v
                .iter()
                .map(|&d| {
                    usize::try_from(d)
                        .map_err(|_| Self::bad(name, format!("negative dimension {d} in {v:?}")))
                })
                .collect::<OpResult<Vec<_>>>()
                .map(Some),
        }
    }
}
