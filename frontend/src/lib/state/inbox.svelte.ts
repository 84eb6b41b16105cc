// The inbox items, kept current by `inbox.updated`.
import { api } from '$lib/api/client';
import type { InboxItem } from '$lib/api/types';
import { unreadCount, upsertItem } from '$lib/inbox';

class InboxState {
	items: InboxItem[] = $state([]);
	loaded = $state(false);
	unread = $derived(unreadCount(this.items));

	async load() {
		const items = await api.inbox();
		let merged = this.items;
		for (const item of items) merged = upsertItem(merged, item);
		this.items = merged;
		this.loaded = true;
	}

	upsert(item: InboxItem) {
		this.items = upsertItem(this.items, item);
	}

	async markRead(id: string) {
		for (const item of await api.markRead(id)) this.upsert(item);
	}

	async markAllRead() {
		for (const item of await api.markAllRead()) this.upsert(item);
	}

	forTask(taskId: string): InboxItem[] {
		return this.items.filter((item) => item.task_id === taskId);
	}
}

export const inbox = new InboxState();
