//! Provider-side exit: the policy that decides which destinations a flow may reach, and the
//! connector that resolves, checks and connects.
