//! Which USR slot boots, from the GPT alone (Flatcar's gptprio): each USR
//! partition carries a priority (0: never), the tries it has left and
//! whether it has booted successfully, in the type-specific attribute
//! bits (see `formats::disk::gpt`). The slot with the highest priority
//! that is successful or has tries left boots; a boot of a slot that is
//! not successful spends one try, written back before the slot is used,
//! so a slot that never reaches its health target (nothing marks it
//! successful) runs out of tries and the next boot falls back to the
//! other slot by itself. The init (pid 1 of the initramfs) applies this
//! on every boot, direct kernel and UEFI alike; the update agent sets
//! the fields when it installs a slot and when the slot proves healthy.

use crate::formats::disk::gpt::Entry;

/// The decision for one boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Partition number of the slot to boot.
    pub number: u32,
    pub label: String,
    /// The slot's attributes to write back before booting it (a try
    /// spent), when they change.
    pub write_back: Option<u64>,
    /// Tries the slot has left after this boot (for the log).
    pub tries_left: u8,
    pub successful: bool,
}

/// The slot to boot among `slots` (the USR partitions), or None when none
/// may boot (every one has priority 0, or is spent and not successful).
/// Ties in priority go to the lower partition number.
pub fn choose(slots: &[Entry]) -> Option<Choice> {
    let best = slots
        .iter()
        .filter(|e| e.priority() > 0 && (e.successful() || e.tries() > 0))
        .max_by_key(|e| (e.priority(), std::cmp::Reverse(e.number)))?;
    let (write_back, tries_left) = if best.successful() {
        (None, best.tries())
    } else {
        let left = best.tries() - 1;
        (Some(best.with_ab(best.priority(), left, false)), left)
    };
    Some(Choice {
        number: best.number,
        label: best.label.clone(),
        write_back,
        tries_left,
        successful: best.successful(),
    })
}

/// The slot named `label`, as a kexec'd boot takes it (see
/// `boot::slotboot`): chosen, and its try counted, by the boot before.
pub fn pinned(slots: &[Entry], label: &str) -> Option<Choice> {
    let e = slots.iter().find(|e| e.label == label)?;
    Some(Choice {
        number: e.number,
        label: e.label.clone(),
        write_back: None,
        tries_left: e.tries(),
        successful: e.successful(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::disk::gpt::ab_attributes;
    use uuid::Uuid;

    fn slot(number: u32, priority: u8, tries: u8, successful: bool) -> Entry {
        Entry {
            number,
            type_guid: Uuid::nil(),
            uuid: Uuid::nil(),
            first_lba: 0,
            last_lba: 0,
            attributes: ab_attributes(priority, tries, successful),
            label: format!("USR-{}", if number == 3 { 'A' } else { 'B' }),
        }
    }

    #[test]
    fn a_new_slot_spends_tries_then_the_good_one_comes_back() {
        // A is good; B was just installed with one try above it.
        let mut a = slot(3, 1, 0, true);
        let mut b = slot(4, 2, 1, false);
        let c = choose(&[a.clone(), b.clone()]).unwrap();
        assert_eq!((c.label.as_str(), c.tries_left), ("USR-B", 0));
        b.attributes = c.write_back.unwrap();
        assert_eq!((b.priority(), b.tries(), b.successful()), (2, 0, false));
        // Nothing marked B: the next boot is A's, unchanged.
        let c = choose(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(c.label, "USR-A");
        assert_eq!(c.write_back, None);
        // Had B been marked successful, it would stay.
        b.attributes = b.with_ab(2, 0, true);
        assert_eq!(choose(&[a.clone(), b]).unwrap().label, "USR-B");
        // Nothing bootable: None.
        a.attributes = a.with_ab(0, 0, true);
        assert_eq!(choose(&[a, slot(4, 1, 0, false)]), None);
    }

    #[test]
    fn ties_go_to_the_lower_number() {
        let c = choose(&[slot(4, 1, 0, true), slot(3, 1, 0, true)]).unwrap();
        assert_eq!(c.number, 3);
    }

    #[test]
    fn a_pinned_slot_is_taken_as_it_is() {
        // The boot before counted B's last try and kexec'd its kernel.
        let slots = [slot(3, 1, 0, true), slot(4, 2, 0, false)];
        let c = pinned(&slots, "USR-B").unwrap();
        assert_eq!((c.number, c.write_back, c.tries_left), (4, None, 0));
        assert_eq!(pinned(&slots, "USR-C"), None);
    }
}
