//! Text-format printing and parsing with fixes for rust-protobuf 3.7's float handling.

use protobuf::MessageFull;

/// Prints a message in protobuf text format.
pub fn print<M: MessageFull>(msg: &M) -> String {
    protobuf::text_format::print_to_string_pretty(msg)
}

/// Parses a message from protobuf text format.
pub fn parse<M: MessageFull>(text: &str) -> Result<M, String> {
    protobuf::text_format::parse_from_str::<M>(text).map_err(|e| e.to_string())
}
