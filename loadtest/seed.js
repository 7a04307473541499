// The seed scenario as a k6 script, for teams that already use k6.
//   k6 run -e TARGET=http://127.0.0.1:8080 loadtest/seed.js
// TIME_SCALE compresses the stages like `couponctl load --time-scale` (0.1: one minute);
// THINK_MS is the pause after each iteration (2000 reproduces the seed's ~34 req/s).
// Accepted request ids are printed as `ACCEPTED <id>` lines on the console (pipe them through
// `grep -o 'ACCEPTED [0-9a-f-]*' | cut -d' ' -f2` into a file for `couponctl verify --accepted`).
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';

const TARGET = __ENV.TARGET || 'http://127.0.0.1:8080';
const SCALE = parseFloat(__ENV.TIME_SCALE || '1');
const THINK = parseFloat(__ENV.THINK_MS || '2000') / 1000;
const COUPONS = parseInt(__ENV.COUPONS || '100', 10);
const USERS = parseInt(__ENV.USERS || '1000000', 10);
const secs = (s) => `${Math.max(1, Math.round(s * SCALE))}s`;

const outcomes = new Counter('coupon_outcomes');

export const options = {
  scenarios: {
    seed: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: secs(60), target: 20 },
        { duration: secs(120), target: 50 },
        { duration: secs(120), target: 100 },
        { duration: secs(240), target: 100 },
        { duration: secs(60), target: 0 },
      ],
      gracefulRampDown: '5s',
    },
  },
  thresholds: {
    'http_req_duration{expected_response:true}': ['p(99)<5'],
    checks: ['rate>0.99'],
  },
};

const rand = (n) => 1 + Math.floor(Math.random() * n);

export default function () {
  const coupon = rand(COUPONS);
  const res = http.post(
    `${TARGET}/api/coupons/${coupon}/issue`,
    JSON.stringify({ userId: rand(USERS) }),
    { headers: { 'Content-Type': 'application/json' }, responseCallback: http.expectedStatuses(202, 409, 403) },
  );
  let code = 'accepted';
  if (res.status === 202) {
    console.log(`ACCEPTED ${res.json('requestId')}`);
  } else {
    try { code = res.json('code'); } catch (e) { code = `http_${res.status}`; }
  }
  outcomes.add(1, { code });
  check(res, {
    'answer is 202 or a JSON refusal': (r) => r.status === 202 || typeof code === 'string',
    'never a server error except unavailable': (r) => r.status < 500 || code === 'unavailable',
  });
  sleep(THINK);
}
