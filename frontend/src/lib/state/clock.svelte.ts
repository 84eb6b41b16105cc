// The time that relative times and running durations are shown against. It ticks on its own
// (a display clock; it asks the server nothing).
class Clock {
	now = $state(Date.now());
	private timer: ReturnType<typeof setInterval> | null = null;

	start() {
		this.timer ??= setInterval(() => (this.now = Date.now()), 10_000);
	}
}

export const clock = new Clock();
