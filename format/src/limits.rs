//! Limits the broker enforces and a client must respect, defined once so the two cannot
//! drift apart.

/// Cap of a consumer-group member's in-flight window (`max_in_flight_messages`): the most
/// messages one member holds unacked at once. The broker clamps a larger window to it.
pub const MAX_MEMBER_IN_FLIGHT_MESSAGES: u32 = 65_536;

/// Most messages one ack range may name. A member never holds more than
/// [`MAX_MEMBER_IN_FLIGHT_MESSAGES`] in flight, and the bound keeps one request's work under
/// a group's lock small; a client that coalesces acks into ranges splits them at this size.
pub const MAX_ACK_RANGE: u32 = MAX_MEMBER_IN_FLIGHT_MESSAGES;
