//! The HTTP front-end (PhotoRoom and remove.bg compatible). Not built yet: see the open issue.
