// Enqueue N jobs, run the Node worker until every one is settled, check the outcome.
//
//   DSN=postgresql://user@host/db node run.js      (or the PG* environment variables)
//
// Job n returns {square: n * n}; every tenth job fails its first attempt and
// is retried; one job always fails and ends dead after its 2 attempts. Exits
// non-zero when anything is not as expected.
'use strict';

const { Client } = require('pg');
const { Worker } = require('./worker');

const QUEUE = 'node_example';
const N = Number(process.env.JOBS || 50);
const config = process.env.DSN ? { connectionString: process.env.DSN } : {};

function check(what, ok, detail) {
  if (!ok) {
    console.error(`FAIL: ${what}${detail === undefined ? '' : `: ${JSON.stringify(detail)}`}`);
    process.exit(1);
  }
  console.log(`ok   ${what}`);
}

async function main() {
  const db = new Client(config);
  await db.connect();
  // Retries after 10 ms instead of a second, so the example runs in a moment.
  await db.query(`select openqueue.oq_configure_queue(queue_name => $1, backoff_base => '10 milliseconds')`, [QUEUE]);

  const worker = new Worker({
    queue: QUEUE,
    pollSeconds: 1,
    handler: async (job) => {
      if (job.payload.poison) throw new Error('poison pill');
      if (job.payload.n % 10 === 0 && job.attempts === 1) throw new Error(`flaky first try of ${job.payload.n}`);
      return { square: job.payload.n * job.payload.n };
    },
  });
  await worker.start(); // listening before the jobs arrive: the notifications wake it

  const payloads = Array.from({ length: N }, (_, i) => ({ n: i + 1 }));
  const { rows: ids } = await db.query(
    'select id from openqueue.oq_enqueue_batch(queue_name => $1, payloads => $2) as id',
    [QUEUE, JSON.stringify(payloads)],
  );
  check(`enqueued ${N} jobs`, ids.length === N);
  const { rows: poison } = await db.query(
    `select openqueue.oq_enqueue(queue_name => $1, payload => '{"poison": true}', max_attempts => 2) as id`,
    [QUEUE],
  );

  const deadline = Date.now() + 60000;
  let stats;
  for (;;) {
    ({ rows: [stats] } = await db.query(
      'select completed, dead, pending, processing, failed from openqueue.oq_stats() where queue_name = $1',
      [QUEUE],
    ));
    if (Number(stats.completed) + Number(stats.dead) === N + 1) break;
    if (Date.now() > deadline) check('every job settled within 60 s', false, stats);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await worker.stop();

  check(`${N} completed, 1 dead`, Number(stats.completed) === N && Number(stats.dead) === 1, stats);
  const { rows: jobs } = await db.query(
    `select id, payload, result, attempts, jsonb_array_length(errors) as errors
       from openqueue.jobs where queue_name = $1 and status = 'completed' order by id`,
    [QUEUE],
  );
  const wrong = jobs.filter((j) => {
    const retried = j.payload.n % 10 === 0;
    return (
      j.result.square !== j.payload.n * j.payload.n ||
      j.attempts !== (retried ? 2 : 1) ||
      j.errors !== (retried ? 1 : 0)
    );
  });
  check('every result is the square; every tenth job took 2 attempts', jobs.length === N && wrong.length === 0, wrong);
  const { rows: [dead] } = await db.query(
    `select status, attempts, errors from openqueue.jobs where id = $1`,
    [poison[0].id],
  );
  check(
    'the poison pill is dead after 2 attempts, each error recorded',
    dead.status === 'dead' && dead.attempts === 2 && dead.errors.map((e) => e.error).join() === 'poison pill,poison pill',
    dead,
  );
  await db.end();
  console.log('all good');
}

main().catch((error) => {
  console.error(`FAIL: ${error.stack || error}`);
  process.exit(1);
});
