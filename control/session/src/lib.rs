//! Sans-IO interactive live streaming sessions (issue 5): roles, green room, stage, chat, polls,
//! reactions, raised hands, app messages, and the `/ws` protocol message types.
