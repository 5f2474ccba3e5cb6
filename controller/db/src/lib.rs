//! The controller task database (see issue 5).
