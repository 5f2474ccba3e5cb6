//! Sans-I/O schedulers of rpar-controller.
