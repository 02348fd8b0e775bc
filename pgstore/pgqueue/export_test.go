package pgqueue

// ReapEvery is reapEvery, for the tests of package pgqueue_test.
const ReapEvery = reapEvery
