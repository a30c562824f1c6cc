//! LMDB record values: Caffe `Datum` and Caffe2 `TensorProtos` (as written by
//! `convert_imageset` and `make_image_db`), their detection, parsing and writing.
//!
//! Parsed records carry either the encoded image file (decoded later with
//! [`decode_bgr`](crate::decode_bgr)) or raw pixels already converted to an interleaved BGR
//! [`Image`]. Grayscale raw pixels are replicated to three channels, as Caffe2's
//! `image_input` does with `color != 0`.

use std::fmt;
use std::str::FromStr;

use caffe2_proto::tensor_proto::DataType;
use caffe2_proto::{Datum, Message, TensorProto, TensorProtos};

use crate::image::{Image, WindowFn};
use crate::{DataError, DataResult};

/// How the records of a database are serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordFormat {
    /// Caffe `Datum` (`use_caffe_datum=1`).
    Datum,
    /// Caffe2 `TensorProtos`: `protos[0]` image, `protos[1]` label.
    TensorProtos,
}

impl fmt::Display for RecordFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordFormat::Datum => "datum",
            RecordFormat::TensorProtos => "tensorprotos",
        })
    }
}

impl FromStr for RecordFormat {
    type Err = DataError;

    /// Accepts `datum` / `caffe` and `tensorprotos` / `caffe2` (case-insensitive).
    fn from_str(s: &str) -> DataResult<RecordFormat> {
        match s.to_ascii_lowercase().as_str() {
            "datum" | "caffe" => Ok(RecordFormat::Datum),
            "tensorprotos" | "tensor_protos" | "caffe2" => Ok(RecordFormat::TensorProtos),
            _ => Err(DataError::Config(format!(
                "unknown record format `{s}` (expected `datum` or `tensorprotos`)"
            ))),
        }
    }
}

/// A record's label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Label {
    /// `Datum.label` or an INT32 label tensor.
    Int(i32),
    /// A FLOAT label tensor.
    Float(f32),
}

impl Label {
    /// The label as an integer class id (float labels rounded to the nearest integer).
    pub fn as_i64(self) -> i64 {
        match self {
            Label::Int(v) => i64::from(v),
            // `as` saturates; finiteness is checked when parsing.
            Label::Float(v) => v.round() as i64,
        }
    }

    /// The label as a float.
    pub fn as_f32(self) -> f32 {
        match self {
            Label::Int(v) => v as f32,
            Label::Float(v) => v,
        }
    }
}

/// The image part of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// An encoded image file (JPEG, PNG, ...).
    Encoded(Vec<u8>),
    /// Raw pixels, already interleaved BGR (3 channels).
    Raw(Image),
}

/// A parsed record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The image.
    pub payload: Payload,
    /// The label.
    pub label: Label,
}

impl Record {
    /// Returns the BGR image, decoding encoded payloads. `key` names the record in errors.
    pub fn into_image(self, key: &str) -> DataResult<Image> {
        self.into_image_window(key, &|_, _| None)
    }

    /// Like [`into_image`](Self::into_image) for a caller that reads only `window(height,
    /// width)` of the image (see [`crate::decode_bgr_window`]: other pixels are unspecified).
    pub fn into_image_window(self, key: &str, window: &WindowFn<'_>) -> DataResult<Image> {
        match self.payload {
            Payload::Encoded(bytes) => crate::image::decode_bgr_window(&bytes, key, window),
            Payload::Raw(img) => Ok(img),
        }
    }
}

fn rec_err(key: &str, msg: impl Into<String>) -> DataError {
    DataError::Record {
        key: key.to_string(),
        msg: msg.into(),
    }
}

/// Reads a base-128 varint at `*pos`.
fn read_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Walks the top level of a protobuf message and returns `(field number, wire type)` of
/// every field, or `None` if the bytes are not a well-formed message (groups included,
/// since neither record type uses them).
fn wire_fields(b: &[u8]) -> Option<Vec<(u64, u8)>> {
    let mut pos = 0usize;
    let mut out = Vec::new();
    while pos < b.len() {
        let tag = read_varint(b, &mut pos)?;
        let field = tag >> 3;
        let wt = (tag & 7) as u8;
        if field == 0 {
            return None;
        }
        match wt {
            0 => {
                read_varint(b, &mut pos)?;
            }
            1 => pos = pos.checked_add(8)?,
            2 => {
                let len = usize::try_from(read_varint(b, &mut pos)?).ok()?;
                pos = pos.checked_add(len)?;
            }
            5 => pos = pos.checked_add(4)?,
            _ => return None,
        }
        if pos > b.len() {
            return None;
        }
        out.push((field, wt));
    }
    Some(out)
}

/// Whether `(field, wire type)` is a legal encoding of a `caffe.Datum` field.
fn is_datum_field(field: u64, wt: u8) -> bool {
    matches!(
        (field, wt),
        (1 | 2 | 3 | 5 | 7, 0) | (4, 2) | (6, 5) | (6, 2)
    )
}

/// Detects the format of one record value from its wire structure.
///
/// A `TensorProtos` has only field 1, length-delimited (its `protos`); a `Datum` has no
/// length-delimited field 1 (its field 1, `channels`, is a varint) and carries its payload in
/// field 4 (bytes) or 6 (floats). Protobuf parsing alone cannot tell them apart, since
/// parsers skip unknown fields; the wire types can.
pub fn detect_format(value: &[u8], key: &str) -> DataResult<RecordFormat> {
    if value.is_empty() {
        return Err(rec_err(key, "empty record value"));
    }
    let fields = wire_fields(value)
        .ok_or_else(|| rec_err(key, "not a protobuf message (malformed wire format)"))?;
    if fields.iter().all(|&(f, wt)| f == 1 && wt == 2) {
        return Ok(RecordFormat::TensorProtos);
    }
    let all_datum = fields.iter().all(|&(f, wt)| is_datum_field(f, wt));
    let has_payload = fields.iter().any(|&(f, wt)| (f == 4 && wt == 2) || f == 6);
    let has_len_1 = fields.iter().any(|&(f, wt)| f == 1 && wt == 2);
    if all_datum || (has_payload && !has_len_1) {
        return Ok(RecordFormat::Datum);
    }
    Err(rec_err(
        key,
        "neither a Caffe Datum nor a Caffe2 TensorProtos record",
    ))
}

/// Parses one record value in the given format. Errors name `key`.
pub fn parse_record(value: &[u8], format: RecordFormat, key: &str) -> DataResult<Record> {
    let actual = detect_format(value, key)?;
    if actual != format {
        return Err(rec_err(
            key,
            format!("record is a {actual} record, but the database format is {format}"),
        ));
    }
    match format {
        RecordFormat::Datum => parse_datum(value, key),
        RecordFormat::TensorProtos => parse_tensor_protos(value, key),
    }
}

fn positive_dim(v: i64, what: &str, key: &str) -> DataResult<usize> {
    if v <= 0 {
        return Err(rec_err(key, format!("{what} must be positive, got {v}")));
    }
    usize::try_from(v).map_err(|_| rec_err(key, format!("{what} {v} is too large")))
}

fn parse_datum(value: &[u8], key: &str) -> DataResult<Record> {
    let mut d =
        Datum::parse_from_bytes(value).map_err(|e| rec_err(key, format!("invalid Datum: {e}")))?;
    if !d.float_data.is_empty() {
        return Err(rec_err(key, "float_data Datum records are not supported"));
    }
    let label = Label::Int(d.label());
    if d.encoded() {
        let data = d.take_data();
        if data.is_empty() {
            return Err(rec_err(key, "encoded Datum has no data"));
        }
        return Ok(Record {
            payload: Payload::Encoded(data),
            label,
        });
    }
    let c = d.channels();
    if c != 1 && c != 3 {
        return Err(rec_err(
            key,
            format!("raw Datum must have 1 or 3 channels, got {c}"),
        ));
    }
    let h = positive_dim(i64::from(d.height()), "Datum height", key)?;
    let w = positive_dim(i64::from(d.width()), "Datum width", key)?;
    let c = c as usize;
    let expected = h
        .checked_mul(w)
        .and_then(|v| v.checked_mul(c))
        .ok_or_else(|| rec_err(key, "Datum dimensions overflow"))?;
    let data = d.data();
    if data.len() != expected {
        return Err(rec_err(
            key,
            format!(
                "raw Datum {c}x{h}x{w} needs {expected} bytes of data, has {}",
                data.len()
            ),
        ));
    }
    Ok(Record {
        payload: Payload::Raw(chw_to_bgr(data, c, h, w)),
        label,
    })
}

/// Converts planar CHW bytes (1 or 3 planes, stored channel order kept) to an interleaved
/// 3-channel image; a single plane is replicated. `data.len()` must be `c * h * w`.
pub fn chw_to_bgr(data: &[u8], c: usize, h: usize, w: usize) -> Image {
    let plane = h * w;
    let mut out = vec![0u8; plane * 3];
    for (i, px) in out.chunks_exact_mut(3).enumerate() {
        if c == 1 {
            px.fill(data[i]);
        } else {
            px[0] = data[i];
            px[1] = data[plane + i];
            px[2] = data[2 * plane + i];
        }
    }
    Image {
        height: h,
        width: w,
        channels: 3,
        data: out,
    }
}

/// Replicates a 1-channel interleaved image to 3 channels (other images are returned as is).
pub fn gray_to_bgr(img: Image) -> Image {
    if img.channels != 1 {
        return img;
    }
    let data = img.data.iter().flat_map(|&v| [v, v, v]).collect();
    Image {
        height: img.height,
        width: img.width,
        channels: 3,
        data,
    }
}

/// The data type of a tensor proto, or the raw enum number if it is unknown.
fn data_type_of(t: &TensorProto) -> Result<DataType, i32> {
    match t.data_type {
        None => Ok(DataType::FLOAT),
        Some(e) => e.enum_value(),
    }
}

fn parse_tensor_protos(value: &[u8], key: &str) -> DataResult<Record> {
    let mut tp = TensorProtos::parse_from_bytes(value)
        .map_err(|e| rec_err(key, format!("invalid TensorProtos: {e}")))?;
    if tp.protos.len() < 2 {
        return Err(rec_err(
            key,
            format!(
                "TensorProtos record needs an image and a label tensor, has {} tensor(s)",
                tp.protos.len()
            ),
        ));
    }
    let label = {
        let t = &tp.protos[1];
        match data_type_of(t) {
            Ok(DataType::INT32) if t.int32_data.len() == 1 => Label::Int(t.int32_data[0]),
            Ok(DataType::FLOAT) if t.float_data.len() == 1 => {
                let v = t.float_data[0];
                if !v.is_finite() {
                    return Err(rec_err(key, format!("label {v} is not finite")));
                }
                Label::Float(v)
            }
            Ok(DataType::INT32) | Ok(DataType::FLOAT) => {
                return Err(rec_err(
                    key,
                    format!(
                        "label tensor must hold exactly one value, has {}",
                        t.int32_data.len().max(t.float_data.len())
                    ),
                ))
            }
            Ok(dt) => {
                return Err(rec_err(
                    key,
                    format!("label tensor must be INT32 or FLOAT, is {dt:?}"),
                ))
            }
            Err(n) => {
                return Err(rec_err(
                    key,
                    format!("label tensor has unknown data_type {n}"),
                ))
            }
        }
    };
    let t = &mut tp.protos[0];
    let payload = match data_type_of(t) {
        Ok(DataType::STRING) => {
            if t.string_data.len() != 1 {
                return Err(rec_err(
                    key,
                    format!(
                        "STRING image tensor must hold exactly one string, has {}",
                        t.string_data.len()
                    ),
                ));
            }
            let bytes = std::mem::take(&mut t.string_data[0]);
            if bytes.is_empty() {
                return Err(rec_err(key, "STRING image tensor is empty"));
            }
            Payload::Encoded(bytes)
        }
        Ok(DataType::BYTE) => {
            let (h, w, c) = match t.dims[..] {
                [h, w] => (h, w, 1),
                [h, w, c] => (h, w, c),
                _ => {
                    return Err(rec_err(
                        key,
                        format!(
                            "BYTE image tensor must have dims [H, W] or [H, W, C], has {:?}",
                            t.dims
                        ),
                    ))
                }
            };
            if c != 1 && c != 3 {
                return Err(rec_err(
                    key,
                    format!("BYTE image tensor must have 1 or 3 channels, has {c}"),
                ));
            }
            let h = positive_dim(h, "image height", key)?;
            let w = positive_dim(w, "image width", key)?;
            let c = c as usize;
            let expected = h
                .checked_mul(w)
                .and_then(|v| v.checked_mul(c))
                .ok_or_else(|| rec_err(key, "image dimensions overflow"))?;
            let data = t.byte_data.take().unwrap_or_default();
            if data.len() != expected {
                return Err(rec_err(
                    key,
                    format!(
                        "BYTE image tensor {h}x{w}x{c} needs {expected} bytes, has {}",
                        data.len()
                    ),
                ));
            }
            Payload::Raw(gray_to_bgr(Image {
                height: h,
                width: w,
                channels: c,
                data,
            }))
        }
        Ok(dt) => {
            return Err(rec_err(
                key,
                format!("image tensor must be STRING (encoded) or BYTE (raw), is {dt:?}"),
            ))
        }
        Err(n) => {
            return Err(rec_err(
                key,
                format!("image tensor has unknown data_type {n}"),
            ))
        }
    };
    Ok(Record { payload, label })
}

fn serialize(m: &impl Message) -> DataResult<Vec<u8>> {
    m.write_to_bytes()
        .map_err(|e| DataError::Config(format!("cannot serialize record: {e}")))
}

fn check_image(img: &Image) -> DataResult<()> {
    if img.channels != 1 && img.channels != 3 {
        return Err(DataError::Config(format!(
            "raw records need 1 or 3 channels, image has {}",
            img.channels
        )));
    }
    if img.data.len() != img.height * img.width * img.channels {
        return Err(DataError::Config(format!(
            "image {}x{}x{} has {} bytes",
            img.height,
            img.width,
            img.channels,
            img.data.len()
        )));
    }
    if i32::try_from(img.height).is_err() || i32::try_from(img.width).is_err() {
        return Err(DataError::Config("image too large for a record".into()));
    }
    Ok(())
}

/// Serializes a Caffe `convert_imageset --encoded` record:
/// `Datum{data = file bytes, label, encoded = true}`.
pub fn datum_encoded(file: &[u8], label: i32) -> DataResult<Vec<u8>> {
    let mut d = Datum::new();
    d.set_data(file.to_vec());
    d.set_label(label);
    d.set_encoded(true);
    serialize(&d)
}

/// Serializes a raw Caffe record: `Datum{channels, height, width, data = CHW pixels, label}`
/// (`encoded` left at its default, false). `img` is interleaved (BGR or gray).
pub fn datum_raw(img: &Image, label: i32) -> DataResult<Vec<u8>> {
    check_image(img)?;
    let (h, w, c) = (img.height, img.width, img.channels);
    let plane = h * w;
    let mut chw = vec![0u8; plane * c];
    for (i, px) in img.data.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            chw[ch * plane + i] = v;
        }
    }
    let mut d = Datum::new();
    // Dimensions checked to fit in i32 above; channels is 1 or 3.
    d.set_channels(c as i32);
    d.set_height(h as i32);
    d.set_width(w as i32);
    d.set_data(chw);
    d.set_label(label);
    serialize(&d)
}

fn int_label(label: i32) -> TensorProto {
    let mut t = TensorProto::new();
    t.set_data_type(DataType::INT32);
    t.dims = vec![1];
    t.int32_data = vec![label];
    t
}

/// Serializes a Caffe2 `make_image_db` record: `protos[0]` STRING dims `[1]` with the file
/// bytes, `protos[1]` INT32 dims `[1]` with the label.
pub fn tensor_protos_encoded(file: &[u8], label: i32) -> DataResult<Vec<u8>> {
    let mut img = TensorProto::new();
    img.set_data_type(DataType::STRING);
    img.dims = vec![1];
    img.string_data = vec![file.to_vec()];
    let mut tp = TensorProtos::new();
    tp.protos = vec![img, int_label(label)];
    serialize(&tp)
}

/// Serializes a raw Caffe2 `make_image_db --raw` record: `protos[0]` BYTE dims
/// `[H, W, C]` with interleaved pixels, `protos[1]` INT32 dims `[1]` with the label.
pub fn tensor_protos_raw(img: &Image, label: i32) -> DataResult<Vec<u8>> {
    check_image(img)?;
    let mut t = TensorProto::new();
    t.set_data_type(DataType::BYTE);
    t.dims = vec![img.height as i64, img.width as i64, img.channels as i64];
    t.set_byte_data(img.data.clone());
    let mut tp = TensorProtos::new();
    tp.protos = vec![t, int_label(label)];
    serialize(&tp)
}
