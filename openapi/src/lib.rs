//! enipool's HTTP API contract. Empty until the daemon issue defines the v1 wire types; nothing
//! depends on it yet.
