// An OpenQueue worker in Node.js: nothing but the SQL functions and LISTEN openqueue.
//
//   const worker = new Worker({ queue: 'emails', handler: async (job) => ({ sent: true }) });
//   await worker.start();   // leases, runs the handler, acks (its return value is the result)
//   await worker.stop();    // finishes the job in hand, then closes its connections
//
// A handler that throws is nacked with the error's text: the job is retried
// with the queue's backoff while attempts are left, then it is dead. While a
// handler runs, its lease is extended every third of its length. Connections
// come from the usual PG* environment variables, or `connectionString`.
'use strict';

const { Client } = require('pg');
const os = require('os');

class Worker {
  constructor({ queue, handler, connectionString, workerId, batchSize = 10, pollSeconds = 5 }) {
    this.queue = queue;
    this.handler = handler;
    this.config = connectionString ? { connectionString } : {};
    this.workerId = workerId || `node-${os.hostname()}-${process.pid}`;
    this.batchSize = batchSize;
    this.pollMs = pollSeconds * 1000;
    this.stopping = false;
    this.wake = null; // resolves the current sleep early
  }

  async start() {
    this.db = new Client(this.config);
    this.listener = new Client(this.config);
    await this.db.connect();
    await this.listener.connect();
    // The payload of a notification is the queue name: wake only for ours.
    this.listener.on('notification', (msg) => {
      if (msg.payload === this.queue && this.wake) this.wake();
    });
    await this.listener.query('LISTEN openqueue');
    this.done = this.loop();
  }

  async stop() {
    this.stopping = true;
    if (this.wake) this.wake();
    await this.done;
    await this.listener.end();
    await this.db.end();
  }

  async loop() {
    while (!this.stopping) {
      const { rows } = await this.db.query(
        `select id, payload, attempts, max_attempts, lease_token,
                extract(epoch from lease_expires_at - now()) as lease_left
           from openqueue.oq_lease(queue_name => $1, worker_id => $2, batch_size => $3)`,
        [this.queue, this.workerId, this.batchSize],
      );
      for (const job of rows) {
        await this.run(job);
      }
      if (rows.length === 0 && !this.stopping) {
        // Nothing due: sleep until a notification for our queue, or the next poll.
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, this.pollMs);
          this.wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.wake = null;
      }
    }
  }

  async run(job) {
    const everyMs = Math.max(1000, (Number(job.lease_left) * 1000) / 3);
    const beat = setInterval(() => {
      this.db
        .query('select openqueue.oq_heartbeat(job_id => $1, lease_token => $2)', [job.id, job.lease_token])
        .catch(() => {}); // a failed heartbeat only shortens the lease; the ack below is still fenced
    }, everyMs);
    try {
      let result;
      try {
        result = await this.handler(job);
      } catch (error) {
        const { rows } = await this.db.query(
          'select openqueue.oq_nack(job_id => $1, lease_token => $2, error => $3) as outcome',
          [job.id, job.lease_token, String((error && error.message) || error)],
        );
        return rows[0].outcome; // 'failed', 'dead', or null when the lease was lost
      }
      const { rows } = await this.db.query(
        'select openqueue.oq_ack(job_id => $1, lease_token => $2, result => $3) as acked',
        [job.id, job.lease_token, result === undefined ? null : JSON.stringify(result)],
      );
      return rows[0].acked ? 'completed' : null; // false: the lease was lost, nothing changed
    } finally {
      clearInterval(beat);
    }
  }
}

module.exports = { Worker };
