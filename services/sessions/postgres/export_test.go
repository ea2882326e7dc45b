package postgres

// ListSQL is listSQL, for TestListPlan.
const ListSQL = listSQL
