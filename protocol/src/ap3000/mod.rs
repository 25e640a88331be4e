//! AP3000 family: to be written.
