//! XML: the element tree, the incremental stream reader with its limits, and namespaces.

pub mod element;
pub mod reader;

pub use element::{Element, Node};
pub use reader::{
    parse_element, Limits, StreamEvent, StreamHeader, StreamReader, XmlError, NS_STREAMS,
};
